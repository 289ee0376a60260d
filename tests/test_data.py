"""Tests of the training dataset, collate, length buckets and speaker/session splits."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from mmer_rt.audio import normalize
from mmer_rt.corpus import Utterance
from mmer_rt.errors import CorpusError, ManifestError
from mmer_rt.text import TextTokenizer, ctc_targets
from training.augment import Augmenter
from training.data import (
    Collator, UtteranceDataset, leave_one_session_out, length_bucketed_batches, sessions, speaker_split,
)

LABELS = ("happy", "angry", "neutral", "sad")


def _wav(path: Path, samples: int, rate: int = 16_000, seed: int = 0) -> Path:
    wave = 0.1 * np.random.default_rng(seed).standard_normal(samples).astype(np.float32)
    soundfile.write(path, wave, rate, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from training.tokenizer import build_tokenizer

    texts = ["hello there", "we won the game", "go away now", "it is raining again"] * 5
    return TextTokenizer(build_tokenizer(texts, 300, tmp_path_factory.mktemp("tok") / "tokenizer.json"))


@pytest.fixture
def utterances(tmp_path):
    return [
        Utterance("a", _wav(tmp_path / "a.wav", 4000, seed=1), "hello [LAUGHTER] there", "happy", "s1", "Session1"),
        Utterance("b", _wav(tmp_path / "b.wav", 2205, rate=22_050, seed=2), "go away", "angry", "s2", "Session1"),
        Utterance("c", _wav(tmp_path / "c.wav", 6000, seed=3), "it is raining", "sad", "s3", "Session2",
                  aug_audio=_wav(tmp_path / "c_aug.wav", 5000, seed=4), aug_text="raining it is"),
    ]


def test_items_hold_cut_waveform_clean_text_and_label(utterances):
    dataset = UtteranceDataset(utterances[:2], LABELS, max_audio_samples=3000)
    first, second = dataset[0], dataset[1]
    assert first["waveform"].dtype == np.float32 and len(first["waveform"]) == 3000
    assert np.allclose(first["waveform"], soundfile.read(utterances[0].audio, dtype="float32")[0][:3000])
    assert len(second["waveform"]) == 1600  # resampled from 22.05 kHz
    assert (first["text"], first["label"], second["label"]) == ("hello there", 0, 1)
    assert "aug_waveform" not in first and not dataset.has_augmented_view
    assert dataset.audio_lengths() == [3000, 1600]


def test_manifest_augmented_view_is_used_and_others_fall_back_to_originals(utterances):
    dataset = UtteranceDataset(utterances, LABELS)
    assert dataset.has_augmented_view
    c, a = dataset[2], dataset[0]
    assert len(c["aug_waveform"]) == 5000 and c["aug_text"] == "raining it is"
    assert np.array_equal(a["aug_waveform"], a["waveform"]) and a["aug_text"] == a["text"]


def test_on_the_fly_augmentation_is_reproducible_and_changes_with_epoch(utterances):
    make = lambda: UtteranceDataset(utterances[:1], LABELS, augment=Augmenter(word_dropout=0.5), seed=5)
    one, two = make(), make()
    assert np.array_equal(one[0]["aug_waveform"], two[0]["aug_waveform"])
    assert not np.array_equal(one[0]["aug_waveform"][:3000], one[0]["waveform"][:3000])
    before = one[0]["aug_waveform"]
    one.set_epoch(1)
    after = one[0]["aug_waveform"]
    assert len(before) != len(after) or not np.array_equal(before, after)


def test_augment_true_uses_the_default_augmenter(utterances):
    item = UtteranceDataset(utterances[:1], LABELS, augment=True)[0]
    assert 4000 / 1.1 - 2 <= len(item["aug_waveform"]) <= 4000 / 0.9 + 2 and item["aug_text"]


def test_unknown_label_is_refused(utterances):
    with pytest.raises(ManifestError, match=r"labels outside .*a \('happy'\)"):
        UtteranceDataset(utterances, ["angry", "sad"])


def test_collate_builds_the_model_batch(utterances, tokenizer):
    dataset = UtteranceDataset(utterances[:2], LABELS)
    items = [dataset[0], dataset[1]]
    batch = Collator(tokenizer)(items)
    assert batch["input_values"].shape == (2, 4000) and batch["input_values"].dtype == torch.float32
    assert batch["sample_mask"].dtype == torch.int64 and batch["sample_mask"].sum(1).tolist() == [4000, 1600]
    assert torch.allclose(batch["input_values"][1, :1600], torch.from_numpy(normalize(items[1]["waveform"])))
    assert batch["input_values"][1, 1600:].abs().sum() == 0
    encoded = tokenizer.encode_batch(["hello there", "go away"])
    assert torch.equal(batch["input_ids"], torch.from_numpy(encoded.input_ids))
    assert torch.equal(batch["attention_mask"], torch.from_numpy(encoded.attention_mask))
    assert batch["input_ids"][0, 0].item() == 0  # <s>
    assert batch["labels"].tolist() == [0, 1]
    assert [t.tolist() for t in batch["ctc_targets"]] == [ctc_targets("hello there"), ctc_targets("go away")]
    assert not any(key.startswith("aug_") for key in batch)


def test_collate_writes_ctc_targets_in_the_models_vocabulary(utterances, tokenizer):
    from training.checkpoint import LEGACY_CTC_VOCAB

    item = dict(UtteranceDataset(utterances[:1], LABELS)[0], text="ok, don't")
    new = Collator(tokenizer)([item])["ctc_targets"][0].tolist()
    old = Collator(tokenizer, LEGACY_CTC_VOCAB)([item])["ctc_targets"][0].tolist()
    assert new == ctc_targets("ok, don't") and old == ctc_targets("ok, don't", LEGACY_CTC_VOCAB)
    assert new[1] == 26 and old[1] == 27 and new[6] == 27 and old[6] == 26  # K and the apostrophe swap places


def test_collate_adds_augmented_view(utterances, tokenizer):
    dataset = UtteranceDataset(utterances, LABELS)
    batch = Collator(tokenizer)([dataset[2], dataset[0]])
    assert batch["aug_input_values"].shape == (2, 5000)
    assert batch["aug_sample_mask"].sum(1).tolist() == [5000, 4000]
    expected = tokenizer.encode_batch(["raining it is", "hello there"]).input_ids
    assert torch.equal(batch["aug_input_ids"], torch.from_numpy(expected))
    assert batch["aug_attention_mask"].shape == batch["aug_input_ids"].shape


def test_collate_refuses_a_mixed_batch(utterances, tokenizer):
    plain = UtteranceDataset(utterances[:1], LABELS)[0]
    with_aug = UtteranceDataset(utterances, LABELS)[2]
    with pytest.raises(ValueError, match="1 of 2 items carry an augmented view"):
        Collator(tokenizer)([plain, with_aug])


def test_dataloader_runs_with_the_collator(utterances, tokenizer):
    loader = torch.utils.data.DataLoader(UtteranceDataset(utterances, LABELS), batch_size=3,
                                         collate_fn=Collator(tokenizer))
    batch = next(iter(loader))
    assert batch["labels"].tolist() == [0, 1, 3] and batch["aug_input_values"].shape[0] == 3


def test_length_buckets_cover_every_index_once_and_group_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1000, 200_000, size=203)
    batches = length_bucketed_batches(lengths, 8, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(203)) and all(1 <= len(b) <= 8 for b in batches)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[rng.permutation(203)[:8]]) for _ in range(50)])
    assert spread < 0.2 * random_spread
    assert length_bucketed_batches(lengths, 8, seed=1) == batches
    assert length_bucketed_batches(lengths, 8, seed=2) != batches


def test_unshuffled_buckets_run_shortest_first():
    batches = length_bucketed_batches([50, 10, 40, 20, 30], 2, shuffle=False)
    assert batches == [[1, 3], [4, 2], [0]]
    with pytest.raises(ValueError, match="batch_size"):
        length_bucketed_batches([1], 0)


def _corpus():
    rows = []
    for session in range(1, 6):
        for speaker in "FM":
            for k in range(3):
                rows.append(Utterance(f"{session}{speaker}{k}", Path("x.wav"), "hi", "happy",
                                      f"Ses{session}{speaker}", f"Session{session}"))
    return rows


def test_speaker_split_by_fraction_and_by_name():
    rows = _corpus()
    kept, held = speaker_split(rows, 0.2, seed=0)
    held_speakers = {u.speaker for u in held}
    assert len(held_speakers) == 2 and not held_speakers & {u.speaker for u in kept}
    assert len(kept) + len(held) == len(rows)
    assert speaker_split(rows, 0.2, seed=0) == (kept, held)
    assert {u.speaker for u in speaker_split(rows, 0.01, seed=0)[1]} != set()  # at least one held out
    kept, held = speaker_split(rows, ["Ses3M"])
    assert {u.speaker for u in held} == {"Ses3M"} and len(held) == 3


@pytest.mark.parametrize("holdout, message", [
    (1.0, "strictly between 0 and 1"), (["nobody"], "unknown speakers"), ([f"Ses{s}{g}" for s in range(1, 6)
                                                                            for g in "FM"], "every speaker"),
])
def test_speaker_split_refuses_bad_holdouts(holdout, message):
    with pytest.raises(CorpusError, match=message):
        speaker_split(_corpus(), holdout)


def test_leave_one_session_out_keeps_validation_out_of_the_test_session():
    rows = _corpus()
    assert sessions(rows) == [f"Session{i}" for i in range(1, 6)]
    for seed in range(5):
        fold = leave_one_session_out(rows, "Session2", validation=0.125, seed=seed)
        assert {u.session for u in fold.test} == {"Session2"}
        assert "Session2" not in {u.session for u in fold.train + fold.validation}
        assert len({u.speaker for u in fold.validation}) == 1
        assert Counter(u.id for u in fold.train + fold.validation + fold.test) == Counter(u.id for u in rows)
    with pytest.raises(CorpusError, match="unknown test session 'Session9'"):
        leave_one_session_out(rows, "Session9")


def test_rank_batches_gives_every_rank_an_equal_contiguous_part_of_each_global_batch():
    from training.distributed import rank_batches

    global_batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]  # the last one does not split evenly
    assert rank_batches(global_batches, 0, 2) == [[0, 1], [4, 5], [8]]
    assert rank_batches(global_batches, 1, 2) == [[2, 3], [6, 7], [9]]  # 10 is left out this epoch
    assert rank_batches(global_batches, 0, 1) == global_batches  # a world of one takes every batch whole
    assert rank_batches([[0, 1], [2]], 1, 3) == []  # too few utterances for 3 ranks: no batch for anyone
