"""Tests of the on-the-fly augmentations: reproducible from a seed, sane output, lengths and SNR as asked."""

import numpy as np
import pytest

from mmer_rt.errors import TextError
from training.augment import Augmenter, add_noise, apply_gain, change_speed, drop_words, swap_adjacent


@pytest.fixture
def tone():
    t = np.arange(16_000) / 16_000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_speed_changes_length_by_the_factor(tone, factor):
    out = change_speed(tone, factor)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert abs(len(out) - len(tone) / factor) <= 2


def test_speed_scales_pitch(tone):
    out = change_speed(tone, 1.1)
    peak_hz = np.argmax(np.abs(np.fft.rfft(out))) * 16_000 / len(out)
    assert abs(peak_hz - 242) < 3


def test_speed_refuses_non_positive_factor(tone):
    with pytest.raises(ValueError, match="speed factor must be positive"):
        change_speed(tone, 0.0)


def test_gain_in_decibels(tone):
    assert np.allclose(apply_gain(tone, 20.0), 10 * tone, atol=1e-6)
    assert np.allclose(apply_gain(tone, -6.0206), tone / 2, atol=1e-5)


def test_noise_reaches_the_requested_snr(tone):
    rng = np.random.default_rng(0)
    noisy = add_noise(tone, 10.0, rng)
    noise = noisy - tone
    snr = 10 * np.log10(np.mean(tone.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.3


def test_noise_on_silence_stays_finite():
    out = add_noise(np.zeros(100, dtype=np.float32), 20.0, np.random.default_rng(0))
    assert np.isfinite(out).all() and 0 < np.abs(out).max() < 1e-3


def test_word_dropout_never_empties_and_keeps_order():
    words = "one two three four".split()
    for seed in range(20):
        out = drop_words(words, 0.9, np.random.default_rng(seed))
        assert out and out == [w for w in words if w in out]
    assert drop_words(words, 0.0, np.random.default_rng(0)) == words
    assert len(drop_words(words, 1.0, np.random.default_rng(0))) == 1


def test_adjacent_swaps():
    words = "a b c d e".split()
    assert swap_adjacent(words, 1.0, np.random.default_rng(0)) == "b a d c e".split()
    assert swap_adjacent(words, 0.0, np.random.default_rng(0)) == words
    assert sorted(swap_adjacent(words, 0.5, np.random.default_rng(3))) == words


def test_augmenter_is_deterministic_for_a_seed(tone):
    augment = Augmenter(word_dropout=0.3, word_swap=0.3)
    text = "we really [LAUGHTER] won the big game today"
    first = augment(tone, text, np.random.default_rng(7))
    second = augment(tone, text, np.random.default_rng(7))
    other = augment(tone, text, np.random.default_rng(8))
    assert np.array_equal(first[0], second[0]) and first[1] == second[1]
    assert not (len(first[0]) == len(other[0]) and np.array_equal(first[0], other[0]))


def test_augmenter_output_is_sane(tone):
    augment = Augmenter()
    for seed in range(5):
        wave, text = augment(tone, "hello [NOISE] world", np.random.default_rng(seed))
        assert wave.dtype == np.float32 and np.isfinite(wave).all()
        assert 16_000 / 1.1 - 2 <= len(wave) <= 16_000 / 0.9 + 2
        assert text and "[" not in text and set(text.split()) <= {"hello", "world"}


def test_augmenter_refuses_empty_transcript(tone):
    with pytest.raises(TextError, match="empty transcript"):
        Augmenter().text("[LAUGHTER]", np.random.default_rng(0))
