"""The benchmark's inputs: speech-like clips of fixed nominal length with transcripts of a set token range.

Every route (PyTorch reference, our onnxruntime graphs, the optimum-onnx peer) receives the same waveforms and
transcripts from here, so their timings and probabilities can be compared row for row. Everything is drawn from a
seed: two runs build identical inputs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmer_rt.audio import SAMPLE_RATE

# Transcript lengths (tokens, <s> and </s> included) grow with the clip, as speech does, inside the 10-40.
TOKEN_RANGES = {2.0: (10, 16), 5.0: (18, 28), 10.0: (30, 40)}
SHORTEST_ROW = 0.85  # rows of a batch last 85-100 % of the nominal length, so padding and masks are exercised

# Words for transcripts and for training the benchmark's own tokenizer: frequent English words, so that a
# byte-level BPE keeps most of them whole, as RoBERTa's does.
WORDS = (
    "i you we they he she it this that what when where why how not never always really very just so well "
    "oh yes no okay right sure maybe please thank sorry know think want need feel like love hate tell said "
    "going come back home work time day night today tomorrow again still all nothing something everything "
    "people man woman friend family money car house job phone door mother father wedding party letter "
    "happy angry sad afraid tired great terrible wonderful awful fine good bad wrong long little much more "
    "can could would should will have has had did does do was were are is am be been get got make made "
    "about after before with without for from into over under out up down the a an and or but if because"
).split()


@dataclass(frozen=True)
class Workload:
    """One benchmark case's batch: raw 16 kHz waveforms (not yet normalised) and their transcripts."""

    clip_seconds: float
    waveforms: tuple[np.ndarray, ...]
    transcripts: tuple[str, ...]

    @property
    def batch_size(self) -> int:
        return len(self.waveforms)

    @property
    def audio_seconds(self) -> float:
        return sum(len(w) for w in self.waveforms) / SAMPLE_RATE

    @property
    def sample_lengths(self) -> list[int]:
        return [len(w) for w in self.waveforms]


def make_workload(clip_seconds: float, batch_size: int, tokenizer, seed: int = 0) -> Workload:
    """A batch of ``batch_size`` clips: the first lasts exactly ``clip_seconds``, the others 85-100 % of it.

    ``tokenizer`` is a :class:`mmer_rt.text.TextTokenizer`; it decides how many words reach each token count.
    """
    rng = np.random.default_rng(_seed(seed, "workload", clip_seconds, batch_size))
    nominal = int(round(clip_seconds * SAMPLE_RATE))
    lengths = [nominal] + [int(nominal * rng.uniform(SHORTEST_ROW, 1.0)) for _ in range(batch_size - 1)]
    low, high = token_range(clip_seconds)
    waveforms = tuple(speech_like(n, rng) for n in lengths)
    transcripts = tuple(transcript_of(int(rng.integers(low, high + 1)), tokenizer, rng) for _ in lengths)
    return Workload(clip_seconds, waveforms, transcripts)


def token_range(clip_seconds: float) -> tuple[int, int]:
    """The token-count range for a clip: the issue's table for 2, 5 and 10 s, interpolated between them."""
    if clip_seconds in TOKEN_RANGES:
        return TOKEN_RANGES[clip_seconds]
    per_second = 3.5  # about the table's slope; keeps quick-mode clips of a second or so at 10 tokens or more
    low = int(np.clip(round(6 + per_second * clip_seconds), 10, 40))
    return low, min(low + 6, 40)


def speech_like(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced signal with a wandering pitch, formant-like spectral tilt, syllable-rate bursts and breath noise.

    Random weights do not care what the audio says; a speech-shaped signal keeps activations in a realistic range
    (white noise would not), and the trained demo model sees something closer to what it was trained on.
    """
    t = np.arange(num_samples) / SAMPLE_RATE
    f0 = rng.uniform(110, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    harmonics = sum(np.sin(k * phase) / k ** 1.2 for k in range(1, 25))
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t + rng.uniform(0, np.pi)), 0, None) ** 0.7
    noise = rng.standard_normal(num_samples) * 0.02
    return (0.3 * harmonics * syllables + noise).astype(np.float32)


def transcript_of(num_tokens: int, tokenizer, rng: np.random.Generator, attempts: int = 20) -> str:
    """Words drawn from ``WORDS`` until the tokenizer gives ``num_tokens`` tokens; a word that would overshoot is
    redrawn (up to ``attempts`` times in a row), so the count lands on the target unless no word fits."""
    words: list[str] = []
    misses = 0
    while misses < attempts:
        candidate = words + [str(rng.choice(WORDS))]
        count = _token_count(" ".join(candidate), tokenizer)
        if count > num_tokens:
            misses += 1
            continue
        words, misses = candidate, 0
        if count == num_tokens:
            break
    return " ".join(words)


def _token_count(text: str, tokenizer) -> int:
    return int(tokenizer.encode_batch([text]).attention_mask.sum())


def benchmark_tokenizer(path: str | Path, vocab_size: int = 600) -> Path:
    """The benchmark's tokenizer.json: a byte-level BPE with RoBERTa's special tokens, trained on ``WORDS``.

    No pretrained tokenizer can be downloaded here; trained on the transcripts' own words, it keeps most words
    whole, as RoBERTa's does for everyday English, so token counts per word are realistic.
    """
    from training.tokenizer import build_tokenizer

    corpus = [" ".join(WORDS[i:i + 12]) for i in range(0, len(WORDS), 3)]
    return build_tokenizer(corpus, vocab_size, path)


def _seed(seed: int, *keys) -> int:
    return zlib.crc32(repr((seed,) + keys).encode())
