"""Manifest utterances to training batches: the dataset, the collate function, length buckets and speaker/session splits.

Decoding, normalising, padding, text cleaning, tokenisation and CTC targets all come from mmer_rt, so a batch here is
built by the same rules the runtime applies when serving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mmer_rt.audio import SAMPLE_RATE, load_audio, pad_batch
from mmer_rt.corpus import Utterance
from mmer_rt.errors import CorpusError, ManifestError
from mmer_rt.text import CTC_VOCAB, TextTokenizer, clean_transcript, ctc_targets

from .augment import Augmenter

MAX_AUDIO_SAMPLES = 210_000  # the published training cut, about 13.1 s at 16 kHz


class UtteranceDataset(torch.utils.data.Dataset):
    """Utterances as dicts of a waveform (16 kHz float32, cut to ``max_audio_samples``), a cleaned transcript and a
    label index, plus ``aug_waveform`` / ``aug_text`` for the augmentation-contrastive pass when there is one.

    The augmented view is present on every item when ``augment`` is set or when any manifest row names
    ``aug_audio`` or ``aug_text``. Each half comes from the manifest where the row names it, else from the augmenter
    (``augment=True`` uses the default Augmenter), else it is the original audio or text unchanged.
    On-the-fly augmentation is drawn from (seed, epoch, index), so it is reproducible and independent of how
    DataLoader workers share the items; call ``set_epoch`` to get fresh augmentations each epoch.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        labels: Sequence[str],
        max_audio_samples: int = MAX_AUDIO_SAMPLES,
        augment: bool | Augmenter = False,
        seed: int = 0,
    ):
        if max_audio_samples < 1:
            raise ValueError(f"max_audio_samples must be positive, got {max_audio_samples}")
        self.utterances = list(utterances)
        self.labels = list(labels)
        index = {label: i for i, label in enumerate(self.labels)}
        unknown = [f"{u.id} ({u.label!r})" for u in self.utterances if u.label not in index]
        if unknown:
            raise ManifestError(f"utterances with labels outside {self.labels}: {', '.join(unknown[:10])}")
        self.label_ids = [index[u.label] for u in self.utterances]
        self.max_audio_samples = max_audio_samples
        self.augmenter = Augmenter() if augment is True else (augment or None)
        self.has_augmented_view = self.augmenter is not None or any(
            u.aug_audio is not None or u.aug_text is not None for u in self.utterances
        )
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        utterance = self.utterances[index]
        waveform = self._load(utterance.audio)
        text = clean_transcript(utterance.text)
        item = {"waveform": waveform, "text": text, "label": self.label_ids[index]}
        if self.has_augmented_view:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            item["aug_waveform"] = self._augmented_audio(utterance, waveform, rng)
            item["aug_text"] = self._augmented_text(utterance, text, rng)
        return item

    def audio_lengths(self) -> list[int]:
        """Each utterance's length in samples at 16 kHz after the cut, read from file headers (no decoding)."""
        import soundfile

        lengths = []
        for u in self.utterances:
            info = soundfile.info(str(u.audio))
            lengths.append(min(math.ceil(info.frames * SAMPLE_RATE / info.samplerate), self.max_audio_samples))
        return lengths

    def _load(self, path) -> np.ndarray:
        return load_audio(path)[: self.max_audio_samples]

    def _augmented_audio(self, utterance: Utterance, waveform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if utterance.aug_audio is not None:
            return self._load(utterance.aug_audio)
        if self.augmenter is not None:
            return self.augmenter.audio(waveform, rng)[: self.max_audio_samples]
        return waveform

    def _augmented_text(self, utterance: Utterance, text: str, rng: np.random.Generator) -> str:
        if utterance.aug_text is not None:
            return clean_transcript(utterance.aug_text)
        if self.augmenter is not None:
            return self.augmenter.text(text, rng)
        return text


class Collator:
    """Stacks dataset items into the model's batch: padded normalised audio, token ids, labels and CTC targets."""

    def __init__(self, tokenizer: TextTokenizer, ctc_vocab: Sequence[str] = CTC_VOCAB):
        self.tokenizer = tokenizer
        self.ctc_vocab = tuple(ctc_vocab)  # the model's own: a resumed older checkpoint keeps its order

    def __call__(self, items: Sequence[dict]) -> dict:
        """Returns input_values (B, N) f32, sample_mask (B, N) i64, input_ids and attention_mask (B, M) i64,
        labels (B,) i64, ctc_targets (B LongTensors), and aug_input_values, aug_sample_mask, aug_input_ids,
        aug_attention_mask when the items carry an augmented view."""
        batch = self._views(items, "waveform", "text", prefix="")
        batch["labels"] = torch.tensor([item["label"] for item in items], dtype=torch.long)
        batch["ctc_targets"] = [torch.tensor(ctc_targets(item["text"], self.ctc_vocab), dtype=torch.long)
                               for item in items]
        with_aug = sum("aug_waveform" in item for item in items)
        if with_aug not in (0, len(items)):
            raise ValueError(f"{with_aug} of {len(items)} items carry an augmented view; a batch needs all or none")
        if with_aug:
            batch.update(self._views(items, "aug_waveform", "aug_text", prefix="aug_"))
        return batch

    def _views(self, items: Sequence[dict], audio_key: str, text_key: str, prefix: str) -> dict:
        values, mask = pad_batch([item[audio_key] for item in items])
        encoded = self.tokenizer.encode_batch([item[text_key] for item in items])
        return {
            f"{prefix}input_values": torch.from_numpy(values),
            f"{prefix}sample_mask": torch.from_numpy(mask),
            f"{prefix}input_ids": torch.from_numpy(encoded.input_ids),
            f"{prefix}attention_mask": torch.from_numpy(encoded.attention_mask),
        }


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True, pool_batches: int = 50
) -> list[list[int]]:
    """Group indices into batches of similar length, so that little of each batch is padding.

    With ``shuffle``, indices are shuffled, cut into pools of ``pool_batches`` batches, sorted by length within a
    pool and the batches shuffled: every epoch's (seed's) batches differ while each stays length-homogeneous.
    Without it, batches run from the shortest to the longest utterance. Every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lengths = np.asarray(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(shuffled), pool):
        members = shuffled[start : start + pool]
        members = members[np.argsort(lengths[members], kind="stable")]
        batches += [members[i : i + batch_size].tolist() for i in range(0, len(members), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class Split:
    """Train, validation and test utterances of one fold."""

    train: list[Utterance]
    validation: list[Utterance]
    test: list[Utterance]


def sessions(utterances: Sequence[Utterance]) -> list[str]:
    """The distinct sessions, sorted: the folds of leave-one-session-out."""
    return sorted({u.session for u in utterances})


def speaker_split(
    utterances: Sequence[Utterance], holdout: float | Sequence[str], seed: int = 0
) -> tuple[list[Utterance], list[Utterance]]:
    """Split by whole speakers into (kept, held_out).

    Args:
      holdout: speaker names to hold out, or a fraction of the speakers (at least one is held out, at least one
        kept), chosen at random from ``seed``.
    """
    speakers = sorted({u.speaker for u in utterances})
    if isinstance(holdout, (int, float)) and not isinstance(holdout, bool):
        if not 0 < holdout < 1:
            raise CorpusError(f"the held-out fraction must lie strictly between 0 and 1, got {holdout}")
        if len(speakers) < 2:
            raise CorpusError(f"cannot hold out speakers from {len(speakers)} speaker(s): {speakers}")
        count = min(max(1, round(holdout * len(speakers))), len(speakers) - 1)
        chosen = set(np.random.default_rng(seed).choice(speakers, size=count, replace=False).tolist())
    else:
        chosen = set(holdout)
        unknown = chosen - set(speakers)
        if unknown:
            raise CorpusError(f"unknown speakers {sorted(unknown)}; the utterances have {speakers}")
        if chosen == set(speakers):
            raise CorpusError("holding out every speaker leaves nothing to train on")
    kept = [u for u in utterances if u.speaker not in chosen]
    held_out = [u for u in utterances if u.speaker in chosen]
    return kept, held_out


def leave_one_session_out(
    utterances: Sequence[Utterance], test_session: str, validation: float | Sequence[str] = 0.1, seed: int = 0
) -> Split:
    """One fold: ``test_session`` is the test set; validation speakers are drawn from the other sessions only, so
    model selection never sees the test session."""
    known = sessions(utterances)
    if test_session not in known:
        raise CorpusError(f"unknown test session {test_session!r}; the utterances have {known}")
    rest = [u for u in utterances if u.session != test_session]
    test = [u for u in utterances if u.session == test_session]
    train, held_out = speaker_split(rest, validation, seed)
    return Split(train=train, validation=held_out, test=test)
