"""Tests of mmer_rt.audio: every source type and dtype, down-mixing, resampling, normalisation, every error."""

import io

import numpy as np
import pytest
import soundfile

from mmer_rt.audio import NORM_EPS, SAMPLE_RATE, load_audio, normalize, pad_batch
from mmer_rt.errors import AudioError


def sine(freq=440.0, rate=SAMPLE_RATE, seconds=0.5, amplitude=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(samples, rate, subtype="PCM_16"):
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def dominant_frequency(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()]


def test_path_bytes_and_file_object_decode_alike(tmp_path):
    data = wav_bytes(sine(), SAMPLE_RATE)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    from_path = load_audio(path)
    assert from_path.dtype == np.float32 and from_path.shape == (SAMPLE_RATE // 2,)
    np.testing.assert_array_equal(load_audio(str(path)), from_path)
    np.testing.assert_array_equal(load_audio(data), from_path)
    np.testing.assert_array_equal(load_audio(bytearray(data)), from_path)
    np.testing.assert_array_equal(load_audio(memoryview(data)), from_path)
    with open(path, "rb") as handle:
        np.testing.assert_array_equal(load_audio(handle), from_path)
    np.testing.assert_allclose(from_path, sine(), atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_float_arrays_keep_their_values(dtype):
    reference = sine()
    out = load_audio(reference.astype(dtype), SAMPLE_RATE)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=1e-3 if dtype == "float16" else 1e-7)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16"])
def test_integer_arrays_are_scaled_to_unit_range(dtype):
    half = 2 ** (np.iinfo(dtype).bits - 1)
    offset = half if np.iinfo(dtype).min == 0 else 0
    reference = sine()
    integers = (np.round(reference.astype(np.float64) * (half - 1)) + offset).astype(dtype)
    out = load_audio(integers, SAMPLE_RATE)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=1.0 / half + 1e-6)


def test_unsupported_dtypes_are_refused():
    for bad in (np.ones(100, dtype=bool), np.ones(100, dtype=np.complex64), np.array(["a"] * 10)):
        with pytest.raises(AudioError, match="unsupported audio dtype"):
            load_audio(bad, SAMPLE_RATE)


def test_multichannel_arrays_are_averaged_in_either_layout():
    left, right = sine(440), sine(660)
    expected = (left + right) / 2
    np.testing.assert_allclose(load_audio(np.stack([left, right], axis=1), SAMPLE_RATE), expected, atol=1e-6)
    np.testing.assert_allclose(load_audio(np.stack([left, right], axis=0), SAMPLE_RATE), expected, atol=1e-6)


def test_multichannel_file_is_averaged():
    left, right = sine(440), sine(660)
    stereo = wav_bytes(np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(stereo), (left + right) / 2, atol=1e-6)


def test_short_multichannel_file_keeps_its_frames():
    # Two frames of six channels: the file's layout is known, so the shorter axis must not be taken as channels.
    frames = np.tile(np.array([[0.1], [0.3]], dtype=np.float32), (1, 6))
    out = load_audio(wav_bytes(frames, SAMPLE_RATE, subtype="FLOAT"))
    np.testing.assert_allclose(out, [0.1, 0.3], atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_length_and_frequency(rate):
    out = load_audio(sine(440, rate=rate, seconds=1.0), rate)
    assert abs(len(out) - SAMPLE_RATE) <= 1
    assert abs(dominant_frequency(out, SAMPLE_RATE) - 440) < 2
    np.testing.assert_allclose(out[2000:-2000], sine(440, seconds=1.0)[2000:-2000], atol=2e-3)


def test_resampling_a_file_to_another_target_rate():
    out = load_audio(wav_bytes(sine(1000, rate=22050, seconds=1.0), 22050), target_rate=8000)
    assert abs(len(out) - 8000) <= 1 and abs(dominant_frequency(out, 8000) - 1000) < 2


def test_array_needs_a_sample_rate():
    with pytest.raises(AudioError, match="needs its sample_rate"):
        load_audio(sine())


@pytest.mark.parametrize("rate", [0, -16000, 16000.0, True, "16000"])
def test_bad_sample_rate_is_refused(rate):
    with pytest.raises(AudioError, match="sample rate must be a positive integer"):
        load_audio(sine(), rate)


def test_file_rate_disagreeing_with_given_rate_is_refused():
    with pytest.raises(AudioError, match="the file says 16000 Hz"):
        load_audio(wav_bytes(sine(), SAMPLE_RATE), sample_rate=8000)


@pytest.mark.parametrize("empty", [np.zeros(0, np.float32), np.zeros((0, 2), np.float32), np.zeros((2, 0), np.int16)])
def test_empty_audio_is_refused(empty):
    with pytest.raises(AudioError, match="empty"):
        load_audio(empty, SAMPLE_RATE)


def test_empty_file_is_refused():
    with pytest.raises(AudioError, match="empty"):
        load_audio(wav_bytes(np.zeros(0, np.float32), SAMPLE_RATE))


def test_audio_too_short_to_resample_is_refused():
    with pytest.raises(AudioError, match="too short to resample"):
        load_audio(np.ones(1, np.float32), 48000)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(bad):
    samples = sine()
    samples[10] = bad
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(samples, SAMPLE_RATE)


def test_three_dimensional_arrays_are_refused():
    with pytest.raises(AudioError, match="1-D or 2-D"):
        load_audio(np.zeros((2, 2, 100), np.float32), SAMPLE_RATE)


def test_corrupt_bytes_and_missing_files_are_refused(tmp_path):
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(b"RIFF\x00\x00 definitely not a wave file")
    garbage = tmp_path / "x.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioError, match=r"x\.wav: cannot decode"):
        load_audio(garbage)
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")


def test_unsupported_source_type_is_refused():
    with pytest.raises(AudioError, match="unsupported audio source of type list"):
        load_audio([0.0, 0.1, 0.2])


def test_normalize_gives_zero_mean_unit_variance():
    x = sine() * 3 + 0.25
    out = normalize(x)
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-6 and abs(out.std() - 1) < 1e-4
    np.testing.assert_array_equal(normalize(np.zeros(10)), np.zeros(10, np.float32))


def test_normalize_in_float32_matches_float64_arithmetic():
    # The longest clip the published model hears (about 13 s), with a DC offset and a quiet stretch.
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(210_000) * 0.1 + 0.05).astype(np.float32)
    x[:50_000] *= 0.01
    exact = (x.astype(np.float64) - x.astype(np.float64).mean()) / np.sqrt(x.astype(np.float64).var() + NORM_EPS)
    np.testing.assert_allclose(normalize(x), exact, rtol=0, atol=1e-5)
    out = np.full(len(x) + 3, 7.0, dtype=np.float32)
    normalize(x, out=out[: len(x)])
    np.testing.assert_array_equal(out[: len(x)], normalize(x))
    assert (out[len(x):] == 7.0).all()


def test_pad_batch_normalises_each_row_over_its_own_samples():
    short, long = sine(seconds=0.1), sine(seconds=0.3) * 2
    values, mask = pad_batch([short, long])
    assert values.shape == mask.shape == (2, len(long)) and mask.dtype == np.int64
    assert mask[0].sum() == len(short) and mask[1].all()
    np.testing.assert_array_equal(values[0, : len(short)], normalize(short))
    assert not values[0, len(short):].any()
    with pytest.raises(AudioError, match="empty"):
        pad_batch([])
