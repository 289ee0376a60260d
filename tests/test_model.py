"""Tests of the reference model: batch invariance, equality with transformers' wav2vec2, fusion, presets."""

from __future__ import annotations

import runpy
import sys

import pytest
import torch

from training.model import (
    MMER,
    AudioEncoder,
    FusionBlock,
    MMERConfig,
    count_parameters,
    masked_max,
    tiny_config,
)

INPUT_KEYS = ("input_values", "sample_mask", "input_ids", "attention_mask")


def forward(model, batch):
    with torch.no_grad():
        return model(*(batch[k] for k in INPUT_KEYS))


def row_alone(batch: dict, row: int) -> dict:
    """One utterance of a padded batch, cut to its own length: what it would be batched with nobody."""
    samples, tokens = int(batch["sample_mask"][row].sum()), int(batch["attention_mask"][row].sum())
    return {
        "input_values": batch["input_values"][row : row + 1, :samples],
        "sample_mask": batch["sample_mask"][row : row + 1, :samples],
        "input_ids": batch["input_ids"][row : row + 1, :tokens],
        "attention_mask": batch["attention_mask"][row : row + 1, :tokens],
    }


@pytest.mark.parametrize("group_norm", [True, False], ids=["group-norm", "layer-norm"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padded_batch_gives_each_utterance_its_result_alone(make_tiny_model, make_tiny_batch, group_norm, attn):
    model = make_tiny_model(group_norm=group_norm, attn_implementation=attn)
    batch = make_tiny_batch((1600, 700, 1234, 333))
    batch["input_values"] = batch["input_values"] + (1 - batch["sample_mask"]) * 7.0  # padding is not zeros
    together = forward(model, batch)
    for row in range(4):
        alone = forward(model, row_alone(batch, row))
        frames = alone.hidden_states.shape[1]
        assert int(together.frame_mask[row].sum()) == frames
        torch.testing.assert_close(together.logits[row], alone.logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(together.hidden_states[row, :frames], alone.hidden_states[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(together.ctc_logits[row, :frames], alone.ctc_logits[0], atol=1e-5, rtol=0)
        assert not together.hidden_states[row, frames:].any()  # padded frames are zero


def test_unmasked_wav2vec2_is_not_batch_invariant_with_group_norm(tiny_model, make_tiny_batch):
    """The reason AudioEncoder exists: HF's forward on the same padded batch changes a short row's frames."""
    batch = make_tiny_batch((1600, 700))
    wav2vec2 = tiny_model.audio_encoder.wav2vec2
    with torch.no_grad():
        padded = wav2vec2(batch["input_values"]).last_hidden_state[1]
        alone = wav2vec2(batch["input_values"][1:, :700]).last_hidden_state[0]
    assert (padded[: len(alone)] - alone).abs().max().item() > 1e-2


@pytest.mark.parametrize("group_norm", [True, False], ids=["group-norm", "layer-norm"])
def test_audio_encoder_of_one_utterance_equals_transformers_wav2vec2(make_tiny_model, make_tiny_batch, group_norm):
    model = make_tiny_model(group_norm=group_norm)
    batch = row_alone(make_tiny_batch((1600,)), 0)
    with torch.no_grad():
        ours, frame_mask = model.audio_encoder(batch["input_values"], batch["sample_mask"])
        published = model.audio_encoder.wav2vec2(batch["input_values"]).last_hidden_state
    assert frame_mask.dtype == torch.int64 and bool(frame_mask.all())
    torch.testing.assert_close(ours, published, atol=5e-6, rtol=0)


def test_frame_lengths_match_transformers_formula(tiny_model):
    encoder: AudioEncoder = tiny_model.audio_encoder
    lengths = torch.tensor([59, 60, 61, 79, 80, 1600, 16000])
    expected = encoder.wav2vec2._get_feat_extract_output_lengths(lengths)
    assert encoder.frame_lengths(lengths).tolist() == expected.clamp(min=0).tolist()
    assert encoder.frame_lengths(torch.tensor([10])).tolist() == [0]  # shorter than the receptive field


def test_output_shapes_and_dtypes(tiny_model, tiny_batch):
    out = forward(tiny_model, tiny_batch)
    batch, tokens = tiny_batch["input_ids"].shape
    frames = out.hidden_states.shape[1]
    assert out.logits.shape == (batch, 4)
    assert out.z.shape == (batch, 32 + 32)
    assert out.ctc_logits.shape == (batch, frames, 32)
    assert out.frame_mask.shape == (batch, frames) and out.frame_mask.dtype == torch.int64
    assert out.scl_embeddings.shape == out.acl_embeddings.shape == (batch, 32)
    assert frames == int(tiny_model.audio_encoder.frame_lengths(torch.tensor(1600)))


def test_fusion_ignores_padded_frames_and_tokens(tiny_model, tiny_batch):
    """Masked max pools and masked attention: whatever sits in padded positions, the fused output is the same."""
    out = forward(tiny_model, tiny_batch)
    with torch.no_grad():
        tokens = tiny_model.text_encoder(tiny_batch["input_ids"], tiny_batch["attention_mask"])
        logits, z = tiny_model.fusion(out.hidden_states, out.frame_mask, tokens, tiny_batch["attention_mask"])
        frame_pad = (1 - out.frame_mask).unsqueeze(-1).float()
        token_pad = (1 - tiny_batch["attention_mask"]).unsqueeze(-1).float()
        loud_audio = out.hidden_states + frame_pad * 1e4  # would win every max pool if not masked
        loud_text = tokens + token_pad * 1e4
        logits2, z2 = tiny_model.fusion(loud_audio, out.frame_mask, loud_text, tiny_batch["attention_mask"])
    assert frame_pad.sum() > 0 and token_pad.sum() > 0
    torch.testing.assert_close(logits2, logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(z2, z, atol=1e-6, rtol=0)


def test_fused_vector_starts_with_max_pooled_audio(tiny_model, tiny_batch):
    out = forward(tiny_model, tiny_batch)
    for row in range(len(out.z)):
        frames = int(out.frame_mask[row].sum())
        torch.testing.assert_close(out.z[row, :32], out.hidden_states[row, :frames].max(dim=0).values)


def test_masked_max_ignores_masked_positions():
    values = torch.tensor([[[1.0, -5.0], [9.0, 9.0], [2.0, -1.0]]])
    mask = torch.tensor([[1, 0, 1]])
    assert masked_max(values, mask).tolist() == [[2.0, -1.0]]


def test_eager_and_sdpa_attention_agree(make_tiny_model, tiny_batch):
    model = make_tiny_model()
    sdpa = forward(model, tiny_batch)
    model.set_attn_implementation("eager")
    assert model.config.attn_implementation == "eager"
    assert model.audio_encoder.wav2vec2.config._attn_implementation == "eager"
    eager = forward(model, tiny_batch)
    torch.testing.assert_close(eager.logits, sdpa.logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="flash"):
        model.set_attn_implementation("flash")


def test_dropout_is_active_in_training_and_text_encoder_stays_frozen(tiny_model, tiny_batch):
    tiny_model.train()
    assert not tiny_model.text_encoder.model.training
    first, second = forward(tiny_model, tiny_batch), forward(tiny_model, tiny_batch)
    assert not torch.allclose(first.logits, second.logits)
    trainable = {name for name, p in tiny_model.named_parameters() if p.requires_grad}
    assert not any(name.startswith("text_encoder.") for name in trainable)
    assert not any("feature_extractor" in name for name in trainable)
    assert any(name.startswith("audio_encoder.wav2vec2.encoder.layers") for name in trainable)


def test_unfrozen_encoders_train():
    config = tiny_config()
    config.freeze_text_encoder = config.freeze_feature_encoder = False
    model = MMER.from_config(config).train()
    assert model.text_encoder.model.training
    assert all(p.requires_grad for p in model.parameters())


def test_layerdrop_skips_layers_in_training_only(tiny_batch):
    config = tiny_config()
    config.audio["layerdrop"] = 1.0  # every layer dropped
    torch.manual_seed(0)
    model = MMER.from_config(config)
    encoder = model.audio_encoder
    args = (tiny_batch["input_values"], tiny_batch["sample_mask"])
    calls = []
    for layer in encoder.wav2vec2.encoder.layers:
        layer.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        encoder.train()(*args)
        assert calls == []
        encoder.eval()(*args)
        assert len(calls) == 2


def test_config_round_trips_through_dict_and_rejects_bad_input():
    config = tiny_config(labels=["a", "b"])
    assert MMERConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown MMERConfig keys.*'colour'"):
        MMERConfig.from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="missing the required keys.*'labels'"):
        MMERConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "labels"})
    with pytest.raises(ValueError, match="attn_implementation"):
        tiny_config(attn_implementation="flash")
    with pytest.raises(ValueError, match="labels is empty"):
        tiny_config(labels=[])


def test_built_model_config_records_spec_augment_off(tiny_model):
    assert tiny_model.config.audio["apply_spec_augment"] is False
    assert tiny_model.config.audio["mask_time_prob"] == 0.0
    assert not hasattr(tiny_model.audio_encoder.wav2vec2, "masked_spec_embed")


def test_pretrained_encoders_are_loaded_from_local_directories(tmp_path, tiny_tokenizer_path):
    from transformers import RobertaModel, RobertaTokenizerFast, Wav2Vec2Config, Wav2Vec2Model
    from transformers.models.roberta import RobertaConfig
    from tokenizers import Tokenizer

    from training.tokenizer import tokenizer_from_pretrained

    random_config = tiny_config()
    torch.manual_seed(123)
    wav2vec2 = Wav2Vec2Model(Wav2Vec2Config.from_dict(random_config.audio))
    roberta = RobertaModel(RobertaConfig.from_dict(random_config.text))
    wav2vec2.save_pretrained(tmp_path / "wav2vec2")
    roberta.save_pretrained(tmp_path / "roberta")
    RobertaTokenizerFast(tokenizer_object=Tokenizer.from_file(str(tiny_tokenizer_path))).save_pretrained(
        tmp_path / "roberta"
    )

    config = tiny_config()
    config.audio_pretrained, config.text_pretrained = str(tmp_path / "wav2vec2"), str(tmp_path / "roberta")
    config.audio, config.text = {}, {"model_type": "bert"}  # ignored: the directories' configs win
    model = MMER.from_config(config)

    encoder_weights = dict(model.audio_encoder.wav2vec2.named_parameters())
    for name, weight in wav2vec2.named_parameters():
        if name in encoder_weights:
            torch.testing.assert_close(encoder_weights[name], weight, rtol=0, atol=0)
    assert len(set(dict(wav2vec2.named_parameters())) - set(encoder_weights)) <= 1  # masked_spec_embed only
    torch.testing.assert_close(model.text_encoder.model.embeddings.word_embeddings.weight,
                               roberta.embeddings.word_embeddings.weight, rtol=0, atol=0)
    assert model.config.text["model_type"] == "roberta" and model.config.audio["hidden_size"] == 32
    assert model.config.audio["apply_spec_augment"] is False  # switched off over the directory's config

    saved = tokenizer_from_pretrained(tmp_path / "roberta", tmp_path / "out" / "tokenizer.json")
    assert Tokenizer.from_file(str(saved)).encode("hello there").ids == \
        Tokenizer.from_file(str(tiny_tokenizer_path)).encode("hello there").ids


def test_parameter_counts_add_up(tiny_model):
    counts = count_parameters(tiny_model)
    assert counts["total"] == sum(p.numel() for p in tiny_model.parameters())
    components = ("audio_encoder", "text_encoder", "ctc_head", "fusion", "scl_head", "acl_head")
    assert sum(counts[name] for name in components) == counts["total"]
    assert counts["trainable"] == counts["total"] - counts["text_encoder"] - sum(
        p.numel() for p in tiny_model.audio_encoder.wav2vec2.feature_extractor.parameters()
    )


def test_command_line_prints_tiny_preset_counts(make_tiny_model, monkeypatch, capsys):
    # runpy runs the module as `python -m training.model` would, without paying for a second interpreter.
    monkeypatch.setattr(sys, "argv", ["training.model", "--preset", "tiny"])
    monkeypatch.delitem(sys.modules, "training.model")  # as in a fresh interpreter; restored afterwards
    runpy.run_module("training.model", run_name="__main__", alter_sys=True)
    printed = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in capsys.readouterr().out.splitlines()}
    assert printed["total"] == sum(p.numel() for p in make_tiny_model().parameters())
    assert printed["fusion"] > 0 and printed["trainable"] < printed["total"]


def test_wav2vec2_adapters_are_refused():
    config = tiny_config()
    config.audio["add_adapter"] = True
    with pytest.raises(ValueError, match="add_adapter=True are not supported"):
        MMER.from_config(config)


def test_fusion_block_shapes_for_unequal_encoder_widths():
    config = tiny_config(labels=["x", "y", "z"])
    fusion = FusionBlock(config, audio_hidden=24, text_hidden=32).eval()
    audio, text = torch.randn(2, 7, 24), torch.randn(2, 5, 32)
    frame_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    token_mask = torch.tensor([[1] * 5, [1] * 2 + [0] * 3])
    logits, z = fusion(audio, frame_mask, text, token_mask)
    assert logits.shape == (2, 3) and z.shape == (2, 24 + 32)
