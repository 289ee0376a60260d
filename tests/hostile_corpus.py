"""The hostile corpus: broken and unusual audio files and arrays, each with the outcome the runtime owes it.

``build_corpus(folder)`` writes the files under ``folder`` and returns every case: a source (a path, bytes or an
array, with its sample rate) and what must come of it, a Prediction (``expect=None``) or an MMERError of a given
type whose message holds a given fragment. The tests run the whole corpus through ``Recognizer.predict``,
``predict_batch`` and the ``mmer-rt predict`` command line.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from mmer_rt.errors import AudioError, TextError

RATE = 16_000
MAX_SAMPLES = 8_000  # the tiny model's max_audio_samples (test_recognizer_fixtures.TINY_MAX_AUDIO_SAMPLES)
MIN_SAMPLES = 60  # the tiny model's min_audio_samples
# Subtypes that are PCM or floating point, written in every container that takes them, and the lossy codecs.
PCM_AND_FLOAT = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
CODECS = (("WAV", "ULAW"), ("WAV", "ALAW"), ("WAV", "IMA_ADPCM"), ("WAV", "MS_ADPCM"), ("WAV", "GSM610"),
          ("WAV", "G721_32"), ("WAV", "NMS_ADPCM_16"), ("AU", "G723_24"), ("CAF", "ALAC_16"), ("OGG", "VORBIS"),
          ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III"))
# Headerless RAW needs its parameters from the caller; SD2 is written but not read on Linux.
SKIPPED_FORMATS = ("RAW", "SD2")


@dataclass
class Case:
    name: str
    source: Any  # a path (str), bytes or a numpy array
    sample_rate: int | None = None
    text: str | None = "okay fine"
    expect: tuple[type, str] | None = None  # None: a Prediction; else (error type, message fragment)

    @property
    def is_file(self) -> bool:
        return isinstance(self.source, str)


def speech_like(samples: int, seed: int = 0, amplitude: float = 0.3) -> np.ndarray:
    """Noise shaped by a slow envelope: more like speech than flat noise, cheap to make."""
    rng = np.random.default_rng(seed)
    envelope = np.abs(np.sin(np.arange(samples) * 2 * np.pi * 3 / RATE)) + 0.05
    return (amplitude * envelope * rng.standard_normal(samples)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _with_rate(data: bytes, rate: int) -> bytes:
    """A canonical 44-byte-header WAV whose fmt chunk claims another sample rate (and byte rate)."""
    patched = bytearray(data)
    block_align = struct.unpack_from("<H", patched, 32)[0]
    struct.pack_into("<II", patched, 24, rate, (rate * block_align) & 0xFFFFFFFF)
    return bytes(patched)


def _with_data_size(data: bytes, size: int) -> bytes:
    patched = bytearray(data)
    assert patched[36:40] == b"data"
    struct.pack_into("<I", patched, 40, size)
    return bytes(patched)


def _format_cases(folder: Path) -> list[Case]:
    cases = []
    clip = speech_like(4_000, seed=1)
    for fmt in sorted(soundfile.available_formats()):
        if fmt in SKIPPED_FORMATS:
            continue
        for subtype in soundfile.available_subtypes(fmt):
            if subtype not in PCM_AND_FLOAT and (fmt, subtype) not in CODECS:
                continue
            path = folder / f"format_{fmt}_{subtype}.{fmt.lower()}"
            try:
                soundfile.write(path, clip, RATE, format=fmt, subtype=subtype)
            except (soundfile.LibsndfileError, RuntimeError, ValueError):
                continue  # a pairing this libsndfile does not write
            cases.append(Case(path.name, str(path)))
    return cases


def build_corpus(folder: Path) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    cases = _format_cases(folder)

    def file(name: str, data: bytes, expect=None, text="okay fine") -> None:
        path = folder / name
        path.write_bytes(data)
        cases.append(Case(name, str(path), text=text, expect=expect))

    clip = speech_like(8_000, seed=2)
    good = wav_bytes(clip)
    # Sample rates, channels and lengths.
    for rate in (1_000, 8_000, 22_050, 44_100, 96_000, 192_000, 768_000):
        file(f"rate_{rate}.wav", wav_bytes(speech_like(rate // 4, seed=rate), rate))
    file("rate_999.wav", wav_bytes(speech_like(1_000), 999), (AudioError, "999 Hz is outside the range"))
    file("rate_800000.wav", wav_bytes(speech_like(200_000), 800_000), (AudioError, "800000 Hz is outside"))
    for channels in (2, 6, 16):
        file(f"channels_{channels}.wav", wav_bytes(np.stack([speech_like(4_000, seed=c) for c in range(channels)], 1)))
    file("empty_audio.wav", wav_bytes(np.zeros(0, np.float32)), (AudioError, "empty"))
    file("one_frame.wav", wav_bytes(np.full(1, 0.5, np.float32)), (AudioError, "too short"))
    file("just_too_short.wav", wav_bytes(clip[: MIN_SAMPLES - 1]), (AudioError, "too short"))
    file("shortest.wav", wav_bytes(clip[:MIN_SAMPLES]))
    file("long_6x.wav", wav_bytes(speech_like(6 * MAX_SAMPLES, seed=3)))
    # Amplitudes.
    file("silence.wav", wav_bytes(np.zeros(4_000, np.float32)))
    file("dc_offset.wav", wav_bytes(np.full(4_000, 0.7, np.float32), subtype="FLOAT"))
    file("clipped_square.wav", wav_bytes(np.sign(np.sin(np.arange(4_000) * 0.05)).astype(np.float32)))
    file("tiny_1e-30.wav", wav_bytes(clip * np.float32(1e-30), subtype="FLOAT"))
    file("loud_1e18.wav", wav_bytes(clip * np.float32(1e18), subtype="FLOAT"))
    file("loud_1e37.wav", wav_bytes(clip * np.float32(1e37), subtype="FLOAT"))
    file("beyond_float32.wav", wav_bytes(clip.astype(np.float64) * 1e300, subtype="DOUBLE"),
         (AudioError, "beyond float32's range"))
    with_nan = clip.copy()
    with_nan[100] = np.nan
    file("nan.wav", wav_bytes(with_nan, subtype="FLOAT"), (AudioError, "NaN or infinite"))
    with_inf = clip.copy()
    with_inf[100] = np.inf
    file("inf.wav", wav_bytes(with_inf, subtype="FLOAT"), (AudioError, "NaN or infinite"))
    # Damaged and lying headers.
    file("cut_in_half.wav", good[: len(good) // 2], (AudioError, "truncated"))
    file("cut_in_half.flac", wav_bytes(clip, fmt="FLAC")[:3_000], (AudioError, "cannot decode"))
    file("header_only.wav", good[:44], (AudioError, "truncated"))
    file("cut_in_header.wav", good[:20], (AudioError, "cannot decode"))
    file("claims_1_hz.wav", _with_rate(wav_bytes(np.zeros(32_000, np.float32)), 1), (AudioError, "1 Hz is outside"))
    file("claims_0_hz.wav", _with_rate(good, 0), (AudioError, "cannot decode"))
    file("claims_4_ghz.wav", _with_rate(good, 4_000_000_000), (AudioError, "cannot decode"))
    file("data_size_huge.wav", _with_data_size(good, 0x7FFF_FFF0), (AudioError, "truncated"))
    file("data_size_zero.wav", _with_data_size(good, 0), (AudioError, "empty"))
    file("wrong_magic.wav", b"RIFX" + good[4:], (AudioError, "cannot decode"))
    # Not audio at all.
    file("zero_bytes.wav", b"", (AudioError, "cannot decode"))
    file("random_bytes.wav", np.random.default_rng(4).bytes(20_000), (AudioError, "cannot decode"))
    file("text.wav", b"this is a text file, not audio\n" * 100, (AudioError, "cannot decode"))
    file("png.wav", b"\x89PNG\r\n\x1a\n" + bytes(200), (AudioError, "cannot decode"))
    file("json.wav", b'{"riff": "WAVE"}', (AudioError, "cannot decode"))
    file("transcript_lone_surrogate.wav", good, (TextError, "not valid Unicode"), text="caf\udce9")
    # Paths that are not audio files.
    (folder / "a_directory").mkdir(exist_ok=True)
    cases.append(Case("directory", str(folder / "a_directory"), expect=(AudioError, "is a directory")))
    cases.append(Case("missing", str(folder / "missing.wav"), expect=(AudioError, "no such audio file")))
    cases.append(Case("name_too_long", str(folder / ("x" * 300 + ".wav")),
                      expect=(AudioError, "cannot open the audio file")))
    link = folder / "dangling_link.wav"
    if not link.is_symlink():
        os.symlink(folder / "nowhere.wav", link)
    cases.append(Case("dangling_link", str(link), expect=(AudioError, "no such audio file")))
    if Path("/dev/zero").exists():
        cases.append(Case("dev_zero", "/dev/zero", expect=(AudioError, "not a regular file")))
    # Bytes and arrays.
    cases.append(Case("bytes_good", good))
    cases.append(Case("bytes_garbage", b"RIFF\x00\x00\x00\x00WAVEjunk", expect=(AudioError, "cannot decode")))
    base = speech_like(4_000, seed=5)
    for dtype in ("float16", "float32", "float64"):
        cases.append(Case(f"array_{dtype}", base.astype(dtype), RATE))
    for dtype in ("int8", "int16", "int32", "int64", "uint8", "uint16"):
        info = np.iinfo(dtype)
        scaled = (base.astype(np.float64) * (info.max // 2) + (info.max // 2 + 1 if info.min == 0 else 0))
        cases.append(Case(f"array_{dtype}", scaled.astype(dtype), RATE))
    cases += [
        Case("array_channels_first", np.stack([base, -base, base]), RATE),
        Case("array_channels_last", np.stack([base, base * 0.5], axis=1), RATE),
        Case("array_loud_1e18", base * np.float32(1e18), RATE),
        Case("array_loud_1e38", base / np.abs(base).max() * np.float32(3e38), RATE),
        Case("array_subnormal", base * np.float32(1e-40), RATE),
        Case("array_rate_1000", speech_like(500), 1_000),
        Case("array_rate_numpy_int", base, np.int64(RATE)),
        Case("array_beyond_float32", base.astype(np.float64) * 1e300, RATE, expect=(AudioError, "beyond float32")),
        Case("array_rate_1", base, 1, expect=(AudioError, "1 Hz is outside")),
        Case("array_rate_0", base, 0, expect=(AudioError, "positive integer")),
        Case("array_rate_float", base, 16_000.0, expect=(AudioError, "positive integer")),
        Case("array_rate_huge", base, 10**9, expect=(AudioError, "outside the range")),
        Case("array_no_rate", base, None, expect=(AudioError, "needs its sample_rate")),
        Case("array_nan", np.full(4_000, np.nan, np.float32), RATE, expect=(AudioError, "NaN")),
        Case("array_3d", np.zeros((2, 2, 2_000), np.float32), RATE, expect=(AudioError, "1-D or 2-D")),
        Case("array_empty_2d", np.zeros((2, 0), np.float32), RATE, expect=(AudioError, "empty")),
        Case("array_bool", base > 0, RATE, expect=(AudioError, "unsupported audio dtype")),
        Case("array_complex", base.astype(np.complex64), RATE, expect=(AudioError, "unsupported audio dtype")),
        Case("array_object", np.array([0.1] * 4_000, dtype=object), RATE, expect=(AudioError, "unsupported")),
        Case("array_text_bytes", base, RATE, text=b"okay", expect=(TextError, "must be a str")),
        Case("list_source", [0.0] * 4_000, RATE, expect=(AudioError, "unsupported audio source")),
    ]
    return cases
