"""Shared test fixtures: a tiny tokenizer, tiny MMER models and padded batches of random audio with transcripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmer_rt.audio import pad_batch
from mmer_rt.text import TextTokenizer, ctc_targets
from training.model import MMER, tiny_config
from training.tokenizer import build_tokenizer

TINY_VOCAB_SIZE = 320  # tiny_config's default text vocabulary
TINY_TEXTS = (
    "I can't believe you did that!",
    "Excuse me, where is the station?",
    "That is the best news I have heard all year.",
    "Leave me alone [LAUGHTER] please.",
    "Why would anyone say something so cruel",
    "We lost the house and everything in it.",
    "Okay. Fine. Whatever you want.",
    "Oh wow, you came back for me!",
)
TINY_LABELS = (2, 0, 0, 1, 1, 3, 2, 0)


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    """A RoBERTa-style tokenizer.json trained on TINY_TEXTS; its ids fit tiny_config()'s text encoder."""
    return build_tokenizer(TINY_TEXTS * 4, TINY_VOCAB_SIZE, tmp_path_factory.mktemp("tokenizer") / "tokenizer.json")


@pytest.fixture
def make_tiny_model():
    """make_tiny_model(**tiny_config_kwargs) -> a seeded MMER with tiny_config shapes, in eval mode."""

    def make(seed: int = 0, **kwargs) -> MMER:
        torch.manual_seed(seed)
        return MMER.from_config(tiny_config(**kwargs)).eval()

    return make


@pytest.fixture
def tiny_model(make_tiny_model) -> MMER:
    """A tiny wav2vec2-base style (GroupNorm front end) MMER in eval mode."""
    return make_tiny_model()


@pytest.fixture
def make_tiny_batch(tiny_tokenizer_path):
    """make_tiny_batch(sample_lengths, texts=None, seed=0) -> a padded batch as MMER.forward and the losses take it.

    Keys: input_values, sample_mask, input_ids, attention_mask (tensors), labels (B,), ctc_targets (lists of
    ids), texts. Audio is seeded noise normalised and padded by mmer_rt, as the runtime does it.
    """
    tokenizer = TextTokenizer(tiny_tokenizer_path)

    def make(sample_lengths=(1600, 900, 1234), texts=None, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        count = len(sample_lengths)
        texts = list(texts if texts is not None else TINY_TEXTS[:count])
        values, mask = pad_batch([rng.standard_normal(n).astype(np.float32) for n in sample_lengths])
        encoded = tokenizer.encode_batch(texts)
        return {
            "input_values": torch.from_numpy(values),
            "sample_mask": torch.from_numpy(mask),
            "input_ids": torch.from_numpy(encoded.input_ids),
            "attention_mask": torch.from_numpy(encoded.attention_mask),
            "labels": torch.tensor([TINY_LABELS[i % len(TINY_LABELS)] for i in range(count)]),
            "ctc_targets": [ctc_targets(t) for t in texts],
            "texts": texts,
        }

    return make


@pytest.fixture
def tiny_batch(make_tiny_batch) -> dict:
    """Three utterances of 1600, 900 and 1234 samples (10 to 20 tiny frames) with different token counts."""
    return make_tiny_batch()



@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """The manifest of a small espeak-ng corpus: 6 voices in 3 sessions, 2 clips per emotion per voice (48 clips)."""
    from training.synth import synthesize_corpus

    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), seed=0, voices=6, per_class=2)
