"""Audio in: decoding with soundfile (libsndfile, shipped inside the wheel, so no system FFmpeg is needed),
down-mixing to mono, resampling to 16 kHz with soxr, and the per-utterance normalisation wav2vec2 expects.

Training and serving both call these functions, so an utterance reaches the model the same way in both.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence, Union

import numpy as np

from .errors import AudioError

SAMPLE_RATE = 16_000
NORM_EPS = 1e-7  # inside the square root, as in Wav2Vec2FeatureExtractor
# The sample rates accepted, in Hz. Below 1 kHz nothing of speech is left, and a header that claims 1 Hz would
# make resampling to 16 kHz multiply the audio 16,000 times; above 768 kHz no recording interface goes.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
# Input read beyond the last sample heard, so that the resampler's filter sees what it would in the whole audio:
# the samples kept then equal the whole audio's resampled to 1e-7 (soxr HQ, 1 kHz to 768 kHz).
RESAMPLE_MARGIN_SECONDS = 0.25
# A header that claims more audio than the file holds by more than this share is a file cut short.
TRUNCATION_TOLERANCE = 0.01
_READ_BLOCK_FRAMES = 1 << 20
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# libsndfile's log line for a header size larger than the file, e.g. "data : 64000 (should be 31978)".
_SHOULD_BE = re.compile(r"(\d+)\s*\(should be (\d+)\)")

AudioSource = Union[str, Path, bytes, bytearray, memoryview, BinaryIO, np.ndarray]


@dataclass(frozen=True)
class Clip:
    """Audio ready for the model: ``samples`` (mono float32 at the target rate, at most ``max_samples`` of them),
    ``duration`` (seconds of the whole source) and ``truncated`` (True when the source was longer than
    ``max_samples`` and only its beginning was decoded and resampled)."""

    samples: np.ndarray
    duration: float
    truncated: bool = False


def load_audio(source: AudioSource, sample_rate: int | None = None, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode, down-mix and resample audio to a mono float32 waveform at ``target_rate``.

    Args:
      source: a path, the bytes of an audio file, a binary file object, or a numpy array of samples. Arrays may
        be of any float or integer dtype (integers are scaled to [-1, 1)); a 2-D array is (samples, channels)
        unless its first axis is the shorter one, in which case it is (channels, samples).
      sample_rate: the rate of an array source (required there); for files it must be None or match the file.
      target_rate: the rate returned.

    Returns:
      A 1-D float32 array at ``target_rate``.

    Raises:
      AudioError: a missing, unreadable, truncated or unsupported file, a closed or text-mode file object, empty
        audio, NaN or infinite samples, samples beyond float32's range, an unsupported dtype, or a sample rate
        that is not an integer from MIN_SAMPLE_RATE to MAX_SAMPLE_RATE.
    """
    return load_clip(source, sample_rate, target_rate).samples


def load_clip(
    source: AudioSource, sample_rate: int | None = None, target_rate: int = SAMPLE_RATE,
    max_samples: int | None = None,
) -> Clip:
    """:func:`load_audio`, keeping at most ``max_samples`` at ``target_rate``: only the beginning of a longer
    source is decoded and resampled, so that the cost is bounded by what will be heard, not by the source's
    length. Raises as :func:`load_audio` does."""
    name = _describe(source)
    _check_rate(target_rate, "target_rate")
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise AudioError(f"{name}: a numpy array needs its sample_rate")
        _check_rate(sample_rate, name)
        if source.ndim not in (1, 2):
            raise AudioError(f"{name}: audio arrays must be 1-D or 2-D, got {source.ndim} dimensions")
        rate, channel_axis = int(sample_rate), _guess_channel_axis(source)
        frames = source.shape[1 - channel_axis] if source.ndim == 2 else len(source)
        # Only the part to be heard is converted and resampled.
        heard = _frames_needed(max_samples, rate, target_rate)
        samples = _array_to_float(source[:heard] if channel_axis == 1 else source[:, :heard], name)
    else:
        samples, rate, frames = _decode(source, name, sample_rate, max_samples, target_rate)
        channel_axis = 1  # soundfile returns (frames, channels)
    # Checked before down-mixing: the mean over an empty axis would turn "empty" into NaN.
    if samples.size == 0:
        raise AudioError(f"{name}: the audio is empty")
    # The channel mean in float64: two float32 channels near float32's largest value would overflow their sum.
    mono = samples if samples.ndim == 1 else samples.mean(axis=channel_axis, dtype=np.float64).astype(np.float32)
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: the audio contains NaN or infinite samples")
    if rate != target_rate:
        import soxr

        mono = soxr.resample(mono, rate, target_rate, quality="HQ")
        if mono.size == 0:
            raise AudioError(f"{name}: the audio is too short to resample from {rate} Hz to {target_rate} Hz")
    truncated = max_samples is not None and frames * target_rate > max_samples * rate
    if max_samples is not None:
        mono = mono[:max_samples]
    return Clip(np.ascontiguousarray(mono, dtype=np.float32), frames / rate, truncated)


def normalize(samples: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Zero mean and unit variance over one utterance, as wav2vec2 was trained: (x - mean) / sqrt(var + 1e-7).

    float32 throughout (the mean accumulated in float64), written into ``out`` when given: three passes over the
    samples and no float64 copy, 1.7x faster than float64 arithmetic and within 1e-6 of it. On a GPU, where the
    graphs take little time, this is most of a large batch's host work. Audio loud enough to overflow float32's
    sum of squares (amplitudes from about 1e17) is redone in float64, so it is not mistaken for silence.
    """
    x = np.asarray(samples, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.subtract(x, np.float32(x.mean(dtype=np.float64)), out=out)
        variance = float(np.dot(out, out)) / max(x.size, 1)
    if not math.isfinite(variance):
        exact = x.astype(np.float64)
        exact -= exact.mean()
        exact /= np.sqrt(np.mean(exact * exact) + NORM_EPS)
        out[...] = exact
        return out
    out *= np.float32(1.0 / np.sqrt(variance + NORM_EPS))
    return out


def pad_batch(waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Normalise each waveform and right-pad with zeros: returns (input_values float32, sample_mask int64)."""
    if not waveforms:
        raise AudioError("the batch is empty")
    width = max(len(w) for w in waveforms)
    values = np.zeros((len(waveforms), width), dtype=np.float32)
    mask = np.zeros((len(waveforms), width), dtype=np.int64)
    for row, wave in enumerate(waveforms):
        normalize(wave, out=values[row, : len(wave)])
        mask[row, : len(wave)] = 1
    return values, mask


def pad_waveforms(waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad waveforms with zeros, as they are: (waveforms float32 (B, N), sample_lengths int64 (B,)). For
    format-version-2 audio graphs, which normalise each utterance themselves."""
    if not waveforms:
        raise AudioError("the batch is empty")
    lengths = np.array([len(w) for w in waveforms], dtype=np.int64)
    values = np.zeros((len(waveforms), int(lengths.max())), dtype=np.float32)
    for row, wave in enumerate(waveforms):
        values[row, : len(wave)] = wave
    return values, lengths


def audio_feeds(waveforms: Sequence[np.ndarray], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The audio graph's feeds for ``waveforms``, by the graph's own input names: normalised values and a sample
    mask (format version 1, ``sample_mask`` among them), else the waveforms as they are and their lengths."""
    if "sample_mask" in input_names:
        values, mask = pad_batch(waveforms)
        return {"input_values": values, "sample_mask": mask}
    values, lengths = pad_waveforms(waveforms)
    return {"waveforms": values, "sample_lengths": lengths}


def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, np.ndarray):
        return f"array{tuple(source.shape)}:{source.dtype}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) and name else f"<{type(source).__name__}>"


def _frames_needed(max_samples: int | None, rate: int, target_rate: int) -> int | None:
    """Source frames that make ``max_samples`` at ``target_rate``, with the resampler's margin; None: all."""
    if max_samples is None:
        return None
    if rate == target_rate:
        return max_samples
    return math.ceil(max_samples * rate / target_rate) + math.ceil(RESAMPLE_MARGIN_SECONDS * rate)


def _decode(source, name: str, sample_rate, max_samples: int | None, target_rate: int) -> tuple[np.ndarray, int, int]:
    """(frames x channels float32, the file's rate, the file's frame count) of the part of a file to be heard."""
    import soundfile

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        _check_path(source, name)
        source = os.fsencode(source)  # soundfile encodes str paths strictly: a non-UTF-8 file name would fail
    elif not hasattr(source, "read"):
        raise AudioError(
            f"unsupported audio source of type {type(source).__name__}: give a path, bytes, a binary file object "
            "or a numpy array"
        )
    elif getattr(source, "closed", False):
        raise AudioError(f"{name}: the file object is closed; give an open one (or the path)")
    elif isinstance(source, io.TextIOBase):
        raise AudioError(f"{name}: the file object was opened in text mode; open it with 'rb'")
    try:
        with soundfile.SoundFile(source) as handle:
            rate, claimed = int(handle.samplerate), int(handle.frames)
            if sample_rate is not None and sample_rate != rate:
                raise AudioError(f"{name}: sample_rate={sample_rate} was given but the file says {rate} Hz")
            _check_rate(rate, name)
            _check_not_cut_short(handle.extra_info, name)
            wanted = _frames_needed(max_samples, rate, target_rate)
            data = _read_frames(handle, wanted, np.float64 if handle.subtype == "DOUBLE" else np.float32)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as error:
        if isinstance(error, AudioError):
            raise
        # libsndfile's own words ("Format not recognised."), without soundfile's "Error opening <object at 0x..>"
        reason = getattr(error, "error_string", None) or str(error)
        raise AudioError(f"{name}: cannot decode audio ({reason})") from error
    if wanted is None or len(data) < wanted:
        # All of the file was read: a count short of the header's is a file cut short (seen with MP3 and others).
        if claimed > 0 and len(data) < claimed * (1 - TRUNCATION_TOLERANCE):
            raise AudioError(
                f"{name}: the file is truncated: its header announces {claimed} frames ({claimed / rate:.2f} s) "
                f"but only {len(data)} ({len(data) / rate:.2f} s) could be read; the file was cut short"
            )
        claimed = len(data)
    if data.dtype != np.float32:
        data = _array_to_float(data, name)
    return data, rate, max(claimed, len(data))


def _check_path(path, name: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise AudioError(f"{name}: no such audio file") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise AudioError(f"{name}: cannot open the audio file ({reason})") from None
    if stat.S_ISDIR(mode):
        raise AudioError(f"{name}: is a directory, not an audio file")
    if not stat.S_ISREG(mode):
        raise AudioError(f"{name}: is not a regular file (a device, pipe or socket); give an audio file")


def _check_not_cut_short(log: str, name: str) -> None:
    """libsndfile reads a WAV, AIFF or AU file whose header claims more data than the file holds without an error,
    only noting in its log "data : 64000 (should be 31978)"; such a file was cut short (an unfinished copy or
    download), and the audio that its header promises is missing."""
    short = []
    for line in log.splitlines():
        match = _SHOULD_BE.search(line)
        if match:
            claimed, present = int(match.group(1)), int(match.group(2))
            if claimed > present and claimed - present > TRUNCATION_TOLERANCE * claimed:
                short.append((claimed, present, line.split(":")[0].strip()))
    if short:
        # The innermost chunk (the smallest claim): the audio data's, rather than the whole RIFF's.
        claimed, present, chunk = min(short)
        raise AudioError(
            f"{name}: the file is truncated: its header announces {claimed} bytes ({chunk} chunk) but the file holds "
            f"{present}, {1 - present / claimed:.0%} missing; the file was cut short (an unfinished copy?)"
        )


def _read_frames(handle, wanted: int | None, dtype) -> np.ndarray:
    """Up to ``wanted`` frames (None: all), read in blocks: a header's frame count is not trusted for memory."""
    blocks = []
    left = wanted
    while left is None or left > 0:
        size = _READ_BLOCK_FRAMES if left is None else min(left, _READ_BLOCK_FRAMES)
        block = handle.read(size, dtype=dtype, always_2d=True)
        if len(block) == 0:
            break
        blocks.append(block)
        if left is not None:
            left -= len(block)
        if len(block) < size:
            break
    if not blocks:
        return np.zeros((0, handle.channels), dtype=dtype)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _array_to_float(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim not in (1, 2):
        raise AudioError(f"{name}: audio arrays must be 1-D or 2-D, got {array.ndim} dimensions")
    kind = array.dtype.kind
    if kind == "f":
        if array.dtype.itemsize > 4:  # float16 and float32 always fit
            with np.errstate(invalid="ignore"):
                peak = float(np.max(np.abs(array))) if array.size else 0.0
            if math.isfinite(peak) and peak > _FLOAT32_MAX:
                raise AudioError(f"{name}: samples of magnitude {peak:.3g} are beyond float32's range; scale the "
                                 "audio (its level does not matter: each utterance is normalised)")
        with np.errstate(over="ignore"):  # only beside NaN or inf, which the caller reports
            return array.astype(np.float32, copy=False)
    if kind == "i":
        return (array.astype(np.float64) / float(2 ** (8 * array.dtype.itemsize - 1))).astype(np.float32)
    if kind == "u":
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        return ((array.astype(np.float64) - half) / half).astype(np.float32)
    raise AudioError(f"{name}: unsupported audio dtype {array.dtype}; use a float or integer dtype")


def _guess_channel_axis(samples: np.ndarray) -> int:
    """Arrays may be (samples, channels) or (channels, samples): the channels are the shorter axis."""
    return 0 if samples.ndim == 2 and samples.shape[0] < samples.shape[1] else 1


def _check_rate(rate, name: str) -> None:
    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate <= 0:
        raise AudioError(f"{name}: sample rate must be a positive integer, got {rate!r}")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: a sample rate of {rate} Hz is outside the range mmer-rt accepts ({MIN_SAMPLE_RATE} to "
            f"{MAX_SAMPLE_RATE} Hz); a header that says so is damaged, or the wrong rate was given"
        )
