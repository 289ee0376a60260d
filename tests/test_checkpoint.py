"""Tests of checkpoint directories: an exact round trip, and a clear CheckpointError for each way one breaks."""

from __future__ import annotations

import json

import pytest
import torch

from mmer_rt.errors import MMERError
from training.checkpoint import CheckpointError, checkpoint_extra, load_checkpoint, save_checkpoint
from training.model import MMER, tiny_config
from training.tokenizer import build_tokenizer

INPUT_KEYS = ("input_values", "sample_mask", "input_ids", "attention_mask")


@pytest.fixture
def saved(tmp_path, tiny_model, tiny_tokenizer_path):
    return save_checkpoint(tiny_model, tmp_path / "ckpt", tiny_tokenizer_path, extra={"epoch": 3})


def test_round_trip_gives_identical_outputs(saved, tiny_model, tiny_batch, tiny_tokenizer_path):
    with torch.no_grad():
        for p in tiny_model.fusion.parameters():  # weights that differ from a fresh seeded build
            p.add_(0.01)
    save_checkpoint(tiny_model, saved, tiny_tokenizer_path)
    loaded, tokenizer_path = load_checkpoint(saved)
    assert not loaded.training
    assert tokenizer_path == saved / "tokenizer.json"
    assert tokenizer_path.read_bytes() == tiny_tokenizer_path.read_bytes()
    assert loaded.config == tiny_model.config
    with torch.no_grad():
        before = tiny_model(*(tiny_batch[k] for k in INPUT_KEYS))
        after = loaded(*(tiny_batch[k] for k in INPUT_KEYS))
    for name in ("logits", "z", "ctc_logits", "hidden_states", "scl_embeddings", "acl_embeddings"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name


def test_config_json_is_tagged_and_keeps_extra(saved):
    raw = json.loads((saved / "config.json").read_text())
    assert raw["format"] == "mmer-checkpoint" and raw["format_version"] == 1
    assert raw["labels"] == ["happy", "angry", "neutral", "sad"]
    assert checkpoint_extra(saved) == {"epoch": 3}


def test_config_records_the_ctc_vocabulary_and_older_ones_read_as_the_legacy_order(saved):
    from mmer_rt.text import CTC_VOCAB
    from training.checkpoint import LEGACY_CTC_VOCAB

    raw = json.loads((saved / "config.json").read_text())
    assert raw["ctc_vocab"] == list(CTC_VOCAB)
    assert load_checkpoint(saved)[0].config.ctc_vocab == list(CTC_VOCAB)
    del raw["ctc_vocab"]  # a checkpoint written before the field existed was trained on the legacy order
    (saved / "config.json").write_text(json.dumps(raw))
    assert load_checkpoint(saved)[0].config.ctc_vocab == list(LEGACY_CTC_VOCAB)
    assert [LEGACY_CTC_VOCAB[26], LEGACY_CTC_VOCAB[27]] == [CTC_VOCAB[27], CTC_VOCAB[26]]
    assert sorted(LEGACY_CTC_VOCAB) == sorted(CTC_VOCAB) and LEGACY_CTC_VOCAB[:26] == CTC_VOCAB[:26]


def test_pretrained_names_are_not_read_when_loading(saved):
    raw = json.loads((saved / "config.json").read_text())
    raw["audio_pretrained"] = raw["text_pretrained"] = "/nonexistent/encoder"
    (saved / "config.json").write_text(json.dumps(raw))
    model, _ = load_checkpoint(saved)
    assert model.config.audio_pretrained == "/nonexistent/encoder"


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found: .*nowhere"):
        load_checkpoint(tmp_path / "nowhere")


def test_a_file_is_not_a_checkpoint(saved):
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(saved / "config.json")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=f"not a complete checkpoint: {name} is missing"):
        load_checkpoint(saved)


def test_unreadable_config(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: cannot read the checkpoint config"):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": "something-else"}, "not an MMER checkpoint config"),
        ({"format_version": 2}, "format version 2 is not supported"),
        ({"fusion_layers": 3}, "invalid model config.*unknown MMERConfig keys.*fusion_layers"),
    ],
)
def test_wrong_format_version_or_config(saved, change, message):
    raw = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**raw, **change}))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_safetensors(saved, damage):
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x00garbage" * 100 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read the weights"):
        load_checkpoint(saved)


def test_weights_of_another_model(saved, tmp_path, tiny_tokenizer_path):
    other = MMER.from_config(tiny_config(labels=["a", "b"]))
    other_dir = save_checkpoint(other, tmp_path / "other", tiny_tokenizer_path)
    (saved / "model.safetensors").write_bytes((other_dir / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"do not match.*wrong shape 2 \(fusion.classifier.bias"):
        load_checkpoint(saved)


def test_errors_are_mmer_errors(tmp_path):
    with pytest.raises(MMERError):
        load_checkpoint(tmp_path / "nowhere")


def test_save_refuses_a_tokenizer_that_does_not_fit(tmp_path, tiny_model, tiny_tokenizer_path):
    with pytest.raises(CheckpointError, match="tokenizer file not found"):
        save_checkpoint(tiny_model, tmp_path / "a", tmp_path / "missing.json")
    big = build_tokenizer([f"word{i} other{i * 7}" for i in range(400)], 600, tmp_path / "big.json")
    with pytest.raises(CheckpointError, match="do not fit the text encoder's vocabulary of 320"):
        save_checkpoint(tiny_model, tmp_path / "b", big)
    with pytest.raises(CheckpointError, match="JSON-serialisable"):
        save_checkpoint(tiny_model, tmp_path / "c", tiny_tokenizer_path, extra={"when": object()})


def test_save_refuses_a_tokenizer_with_another_pad_id(tmp_path, tiny_tokenizer_path):
    config = tiny_config()
    config.text["pad_token_id"] = 0
    with pytest.raises(CheckpointError, match="pads with id 1 but the text encoder's pad_token_id is 0"):
        save_checkpoint(MMER.from_config(config), tmp_path / "ckpt", tiny_tokenizer_path)
