"""On-the-fly augmentation for the augmentation-contrastive task: speed, gain and noise for audio; word dropout
and adjacent swaps for text.

MMER's authors augmented with back-translation and zero-shot TTS; those models cannot ship here, so where a manifest
names no augmented version, these cheap label-preserving perturbations make the second view. Every function takes
a numpy Generator, so an item's augmentation is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmer_rt.audio import SAMPLE_RATE
from mmer_rt.errors import TextError
from mmer_rt.text import clean_transcript

_SILENCE_POWER = 1e-12  # below this a signal is treated as silent, so noise is scaled to a floor instead


def change_speed(waveform: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch moves with it, as in Kaldi-style speed perturbation): length / factor."""
    import soxr

    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    # Declaring the input rate factor times higher and resampling to the true rate shortens the clip by factor.
    return soxr.resample(np.asarray(waveform, dtype=np.float32), SAMPLE_RATE * factor, SAMPLE_RATE, quality="HQ")


def apply_gain(waveform: np.ndarray, gain_db: float) -> np.ndarray:
    return (np.asarray(waveform, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def add_noise(waveform: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise whose power is the signal's divided by 10^(snr_db / 10)."""
    wave = np.asarray(waveform, dtype=np.float32)
    signal_power = max(float(np.mean(wave.astype(np.float64) ** 2)), _SILENCE_POWER)
    noise = rng.standard_normal(wave.shape) * np.sqrt(signal_power / 10.0 ** (snr_db / 10.0))
    return (wave + noise).astype(np.float32)


def drop_words(words: list[str], probability: float, rng: np.random.Generator) -> list[str]:
    """Drop each word with ``probability``, always keeping at least one."""
    if not words:
        return []
    keep = rng.random(len(words)) >= probability
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return [w for w, k in zip(words, keep) if k]


def swap_adjacent(words: list[str], probability: float, rng: np.random.Generator) -> list[str]:
    """Swap each word with its right neighbour with ``probability``; a swapped pair is not swapped again."""
    out = list(words)
    i = 0
    while i < len(out) - 1:
        if rng.random() < probability:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    return out


@dataclass(frozen=True)
class Augmenter:
    """The perturbation ranges for the augmented view; call it with a Generator to get one augmented utterance."""

    speed: tuple[float, float] = (0.9, 1.1)
    gain_db: tuple[float, float] = (-6.0, 6.0)
    snr_db: tuple[float, float] = (10.0, 30.0)
    word_dropout: float = 0.1
    word_swap: float = 0.1

    def audio(self, waveform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        wave = change_speed(waveform, rng.uniform(*self.speed))
        wave = apply_gain(wave, rng.uniform(*self.gain_db))
        return add_noise(wave, rng.uniform(*self.snr_db), rng)

    def text(self, text: str, rng: np.random.Generator) -> str:
        words = clean_transcript(text).split()
        if not words:
            raise TextError(f"cannot augment an empty transcript: {text!r}")
        return " ".join(swap_adjacent(drop_words(words, self.word_dropout, rng), self.word_swap, rng))

    def __call__(self, waveform: np.ndarray, text: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        return self.audio(waveform, rng), self.text(text, rng)
