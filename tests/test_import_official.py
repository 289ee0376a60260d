"""python -m training.import_official: the MMER authors' checkpoint format read safely and strictly, mapped onto the
project's model so that it computes what the authors' forward pass computes, then exported and recognised.

The authors' file is written here from the key/shape table of docs/official-checkpoint.md (``authors_shapes``,
which reproduces the doc's 296 tensors and 129,838,001 values at the released size), and the authors' forward pass is
written here from their code (``authors_fusion``: BERT layers from the raw tensors by their names; wav2vec2 is
transformers' Wav2Vec2Model in their code too). Neither goes through the importer's name rules. Networks are built
at a reduced width for speed (``TINY``: wav2vec2-base's layout, GroupNorm front end without conv bias, post-LN,
at width 32); the released size is checked for the format only (``test_the_released_format_*``), with tensors
that share one element so that the file stays small.
"""

from __future__ import annotations

import collections
import math
import os
import re
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mmer_rt.errors import MMERError
from training import import_official as importer
from training.checkpoint import checkpoint_extra, load_checkpoint
from training.import_official import (
    NOT_COMPUTED, OfficialArchitecture, OfficialCheckpointError, import_official, map_official, read_official,
    released_architecture,
)
from training.model import MMER, base_config, tiny_config

from test_text import WAV2VEC2_VOCAB_JSON

README = Path(__file__).resolve().parents[1] / "README.md"
TINY_AUDIO = tiny_config().audio  # hidden 32, 2 layers, 4 heads, conv (32, 32, 32) kernels (10, 3, 3), pos conv 16/4
TINY = OfficialArchitecture(audio=TINY_AUDIO, fusion_heads=4, fusion_ffn=64, max_audio_samples=16_000)
INPUTS = ("input_values", "sample_mask", "input_ids", "attention_mask")


def authors_shapes(width=768, w2v_layers=12, w2v_ffn=3072, conv_dim=512, conv_kernels=(10, 3, 3, 3, 3, 2, 2),
                   pos_kernel=128, pos_groups=16, fusion_ffn=3072, labels=4, ctc=32) -> dict[str, tuple]:
    """The authors' keys and shapes in the doc's order (docs/official-checkpoint.md); the defaults are the
    released sizes."""
    shapes = {"model_mmi.weights": (w2v_layers + 1,), "model_mmi.wav2vec2.masked_spec_embed": (width,)}
    w2v = "model_mmi.wav2vec2."
    for i, kernel in enumerate(conv_kernels):
        shapes[f"{w2v}feature_extractor.conv_layers.{i}.conv.weight"] = (conv_dim, 1 if i == 0 else conv_dim, kernel)
        if i == 0:
            for p in ("weight", "bias"):
                shapes[f"{w2v}feature_extractor.conv_layers.0.layer_norm.{p}"] = (conv_dim,)
    for p in ("weight", "bias"):
        shapes[f"{w2v}feature_projection.layer_norm.{p}"] = (conv_dim,)
    shapes[f"{w2v}feature_projection.projection.weight"] = (width, conv_dim)
    shapes[f"{w2v}feature_projection.projection.bias"] = (width,)
    shapes[f"{w2v}encoder.pos_conv_embed.conv.bias"] = (width,)
    shapes[f"{w2v}encoder.pos_conv_embed.conv.weight_g"] = (1, 1, pos_kernel)
    shapes[f"{w2v}encoder.pos_conv_embed.conv.weight_v"] = (width, width // pos_groups, pos_kernel)
    for p in ("weight", "bias"):
        shapes[f"{w2v}encoder.layer_norm.{p}"] = (width,)
    for layer in range(w2v_layers):
        prefix = f"{w2v}encoder.layers.{layer}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{prefix}attention.{proj}.weight"] = (width, width)
            shapes[f"{prefix}attention.{proj}.bias"] = (width,)
        shapes[f"{prefix}layer_norm.weight"] = shapes[f"{prefix}layer_norm.bias"] = (width,)
        shapes[f"{prefix}feed_forward.intermediate_dense.weight"] = (w2v_ffn, width)
        shapes[f"{prefix}feed_forward.intermediate_dense.bias"] = (w2v_ffn,)
        shapes[f"{prefix}feed_forward.output_dense.weight"] = (width, w2v_ffn)
        shapes[f"{prefix}feed_forward.output_dense.bias"] = (width,)
        shapes[f"{prefix}final_layer_norm.weight"] = shapes[f"{prefix}final_layer_norm.bias"] = (width,)

    def bert_layer(prefix):
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[f"{prefix}.{part}.weight"], shapes[f"{prefix}.{part}.bias"] = (width, width), (width,)
        shapes[f"{prefix}.attention.output.LayerNorm.weight"] = shapes[f"{prefix}.attention.output.LayerNorm.bias"] = (
            width,)
        shapes[f"{prefix}.intermediate.dense.weight"], shapes[f"{prefix}.intermediate.dense.bias"] = (
            (fusion_ffn, width), (fusion_ffn,))
        shapes[f"{prefix}.output.dense.weight"], shapes[f"{prefix}.output.dense.bias"] = (width, fusion_ffn), (width,)
        shapes[f"{prefix}.output.LayerNorm.weight"] = shapes[f"{prefix}.output.LayerNorm.bias"] = (width,)

    def linear(prefix, out, inp):
        shapes[f"{prefix}.weight"], shapes[f"{prefix}.bias"] = (out, inp), (out,)

    bert_layer("model_mmi.self_attention_v2.layer.0")
    linear("model_mmi.vismap2text", width, width)
    linear("model_mmi.vismap2text_v2", width, width)
    for name in ("txt2img_attention", "img2txt_attention", "txt2txt_attention"):
        bert_layer(f"model_mmi.{name}.layer.0")
    linear("model_mmi.gate", width, 2 * width)
    linear("model_mmi.classifier.linear3", labels, 2 * width)
    linear("model_mmi.ctc_linear", ctc, width)
    linear("model_mmi.downsample_final", width, 2 * width)
    for head in ("orgin_linear_change", "augment_linear_change"):
        linear(f"{head}.0", width, 2 * width)
        linear(f"{head}.2", width, width)
    return shapes


TINY_SHAPES = dict(width=32, w2v_layers=2, w2v_ffn=64, conv_dim=32, conv_kernels=(10, 3, 3), pos_kernel=16,
                   pos_groups=4, fusion_ffn=64)


def random_authors_state(seed=0, **sizes) -> collections.OrderedDict:
    """Random weights of a trained-looking scale: LayerNorm gains near 1, weight_g the norm of weight_v."""
    generator = torch.Generator().manual_seed(seed)
    state = collections.OrderedDict()
    for name, shape in authors_shapes(**sizes).items():
        noise = torch.randn(shape, generator=generator)
        if ("LayerNorm" in name or "layer_norm" in name) and name.endswith("weight"):
            state[name] = 1.0 + 0.1 * noise
        elif name.endswith("bias"):
            state[name] = 0.05 * noise
        else:
            state[name] = noise / math.sqrt(shape[-1] if len(shape) < 3 else shape[1] * shape[2])
    v = state["model_mmi.wav2vec2.encoder.pos_conv_embed.conv.weight_v"]
    state["model_mmi.wav2vec2.encoder.pos_conv_embed.conv.weight_g"] = (
        v.norm(dim=(0, 1), keepdim=True) * (1.0 + 0.1 * torch.rand((1, 1, v.shape[2]), generator=generator)))
    return state


def save_authors_file(path: Path, state, prefix: str = "", weight_norm: str = "g_v") -> Path:
    """torch.save({'state_dict': ...}) as the authors' training script wrote it; ``prefix="module."`` as from a
    DataParallel model, ``weight_norm="parametrizations"`` as newer torch names the positional conv's weight norm."""
    renamed = collections.OrderedDict()
    for name, tensor in state.items():
        if weight_norm == "parametrizations":
            name = name.replace("conv.weight_g", "conv.parametrizations.weight.original0")
            name = name.replace("conv.weight_v", "conv.parametrizations.weight.original1")
        renamed[prefix + name] = tensor
    torch.save({"state_dict": renamed}, path)
    return path


# ----- the authors' forward pass, from the raw tensors ---------------------------------------------------------
def authors_wav2vec2(raw, audio_config):
    """Their audio encoder: transformers' Wav2Vec2Model with SpecAugment off, its weights the file's own."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config.from_dict(audio_config)
    config.apply_spec_augment = False  # as from_pretrained(..., apply_spec_augment=False); mask_time_prob stays
    model = Wav2Vec2Model(config).eval()
    prefix = "model_mmi.wav2vec2."
    weights = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    for form, new in (("weight_g", "original0"), ("weight_v", "original1")):
        weights[f"encoder.pos_conv_embed.conv.parametrizations.weight.{new}"] = weights.pop(
            f"encoder.pos_conv_embed.conv.{form}")
    model.load_state_dict(weights, strict=True)  # masked_spec_embed included: their module has it
    return model


def authors_fusion(raw, audio, text, audio_mask, text_mask, heads):
    """MMI_Model.forward after wav2vec2 (Sreyan88/MMER src/mmi_module.py, fuse_type 'max'), in eval mode; returns
    the classifier's logits, the fused vector and the two contrastive heads' outputs."""

    def linear(x, name):
        return x @ raw[f"{name}.weight"].T + raw[f"{name}.bias"]

    def layer_norm(x, name):  # BertLayerNorm: TF style, eps 1e-12 inside the square root
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        return raw[f"{name}.weight"] * (x - mean) / torch.sqrt(variance + 1e-12) + raw[f"{name}.bias"]

    def gelu(x):
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))

    def split(x):
        batch, length, width = x.shape
        return x.view(batch, length, heads, width // heads).permute(0, 2, 1, 3)

    def bert_layer(prefix, s1, s2, s2_mask):  # BertCrossAttentionLayer; BertLayer is s1 = s2
        extended = (1.0 - s2_mask[:, None, None, :].to(s1.dtype)) * -10000.0
        query = split(linear(s1, f"{prefix}.attention.self.query"))
        key = split(linear(s2, f"{prefix}.attention.self.key"))
        value = split(linear(s2, f"{prefix}.attention.self.value"))
        scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]) + extended
        context = (scores.softmax(-1) @ value).permute(0, 2, 1, 3).reshape(s1.shape)
        attended = layer_norm(linear(context, f"{prefix}.attention.output.dense") + s1,
                              f"{prefix}.attention.output.LayerNorm")
        hidden = linear(gelu(linear(attended, f"{prefix}.intermediate.dense")), f"{prefix}.output.dense")
        return layer_norm(hidden + attended, f"{prefix}.output.LayerNorm")

    main = bert_layer("model_mmi.self_attention_v2.layer.0", text, text, text_mask)
    cross = bert_layer("model_mmi.txt2img_attention.layer.0", main, linear(audio, "model_mmi.vismap2text"),
                       audio_mask)
    cross_txt = bert_layer("model_mmi.img2txt_attention.layer.0", linear(audio, "model_mmi.vismap2text_v2"), main,
                           text_mask)
    final_txt = bert_layer("model_mmi.txt2txt_attention.layer.0", main, cross_txt, audio_mask)
    gate = torch.sigmoid(linear(torch.cat((final_txt, cross), -1), "model_mmi.gate"))
    final = torch.cat((final_txt, gate * cross), -1)
    audio_pool = audio.masked_fill(audio_mask[..., None] == 0, -9999.9999).max(dim=1).values
    text_pool = final.masked_fill(text_mask[..., None] == 0, -9999.9999).max(dim=1).values
    z = torch.cat((audio_pool, linear(text_pool, "model_mmi.downsample_final")), -1)
    heads_out = {name: linear(gelu(linear(z, f"{name}.0")), f"{name}.2")
                 for name in ("orgin_linear_change", "augment_linear_change")}
    return linear(z, "model_mmi.classifier.linear3"), z, heads_out


def authors_forward_alone(raw, audio_config, text_model, values, ids, heads):
    """One utterance through the authors' network: (1, N) audio, (1, M) token ids, no padding anywhere."""
    with torch.no_grad():
        audio = authors_wav2vec2(raw, audio_config)(values)[0]
        text = text_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        logits, z, heads_out = authors_fusion(raw, audio, text, torch.ones(audio.shape[:2]), torch.ones_like(ids),
                                              heads)
        ctc = audio @ raw["model_mmi.ctc_linear.weight"].T + raw["model_mmi.ctc_linear.bias"]  # dropout: eval
    return {"logits": logits, "z": z, "ctc": ctc, **heads_out}


# ----- fixtures ------------------------------------------------------------------------------------------------
def write_roberta_dir(path: Path, tokenizer_json: Path, width: int, layers: int, heads: int) -> Path:
    """A small RoBERTa (random weights) and its fast tokenizer, saved as transformers saves roberta-base."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    torch.manual_seed(1)
    config = RobertaConfig(vocab_size=320, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=2 * width, max_position_embeddings=130, type_vocab_size=1,
                           layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(path)
    RobertaTokenizerFast(tokenizer_file=str(tokenizer_json)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory, tiny_tokenizer_path) -> Path:
    return write_roberta_dir(tmp_path_factory.mktemp("roberta") / "roberta", tiny_tokenizer_path, 32, 2, 4)


@pytest.fixture(scope="module")
def authors_state():
    return random_authors_state(seed=0, **TINY_SHAPES)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, authors_state, roberta_dir) -> Path:
    folder = tmp_path_factory.mktemp("imported")
    source = save_authors_file(folder / "fold1.pt", authors_state, prefix="module.")
    return import_official(source, str(roberta_dir), folder / "checkpoint", architecture=TINY, log=lambda m: None)


def _text_model(roberta_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(roberta_dir, add_pooling_layer=False).eval()


def _batch(tokenizer_path, lengths, texts, seed=0):
    from mmer_rt.audio import pad_batch
    from mmer_rt.text import TextTokenizer

    rng = np.random.default_rng(seed)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    values, mask = pad_batch(waves)
    encoded = TextTokenizer(tokenizer_path).encode_batch(texts)
    batch = {"input_values": torch.from_numpy(values), "sample_mask": torch.from_numpy(mask),
             "input_ids": torch.from_numpy(encoded.input_ids),
             "attention_mask": torch.from_numpy(encoded.attention_mask)}
    return waves, batch


# ----- the mapping computes the authors' forward pass ------------------------------------------------------------
def test_imported_model_computes_the_authors_forward_pass(imported, authors_state, roberta_dir):
    """Logits, fused vector, CTC logits and both contrastive heads equal the authors' computation on each utterance
    alone, while the imported model runs them as one padded batch."""
    model, tokenizer_path = load_checkpoint(imported)
    texts = ["I can't believe you did that!", "Leave me alone [LAUGHTER] please.", "Okay. Fine."]
    _, batch = _batch(tokenizer_path, (1600, 900, 1234), texts)
    with torch.no_grad():
        ours = model(*(batch[k] for k in INPUTS))
    text_model = _text_model(roberta_dir)
    for row, text in enumerate(texts):
        n, m = int(batch["sample_mask"][row].sum()), int(batch["attention_mask"][row].sum())
        theirs = authors_forward_alone(authors_state, TINY_AUDIO, text_model, batch["input_values"][row:row + 1, :n],
                                       batch["input_ids"][row:row + 1, :m], heads=4)
        frames = int(ours.frame_mask[row].sum())
        assert theirs["ctc"].shape[1] == frames
        torch.testing.assert_close(ours.logits[row], theirs["logits"][0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(ours.z[row], theirs["z"][0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(ours.ctc_logits[row, :frames], theirs["ctc"][0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(ours.scl_embeddings[row], theirs["orgin_linear_change"][0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(ours.acl_embeddings[row], theirs["augment_linear_change"][0], atol=2e-5, rtol=1e-4)
    assert ours.logits.abs().max() > 0.1 and ours.logits.std(0).max() > 1e-3  # not a degenerate model


def test_fusion_matches_the_authors_on_a_padded_batch(imported, authors_state):
    """Their fusion with masks (its own -10000 masking and -9999.9999 pooling fill) on padded inputs."""
    model, _ = load_checkpoint(imported)
    generator = torch.Generator().manual_seed(3)
    audio = torch.randn(2, 7, 32, generator=generator)
    text = torch.randn(2, 5, 32, generator=generator)
    audio_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    text_mask = torch.tensor([[1] * 3 + [0] * 2, [1] * 5])
    with torch.no_grad():
        logits, z = model.fusion(audio * audio_mask[..., None], audio_mask, text, text_mask)
        expected, expected_z, _ = authors_fusion(authors_state, audio * audio_mask[..., None], text, audio_mask,
                                                 text_mask, heads=4)
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(z, expected_z, atol=2e-5, rtol=1e-4)


def test_prefix_and_weight_norm_forms_import_the_same_weights(tmp_path, authors_state, roberta_dir, imported):
    from safetensors.torch import load_file

    reference = load_file(str(imported / "model.safetensors"))
    for prefix, form in (("", "g_v"), ("", "parametrizations"), ("module.", "parametrizations")):
        source = save_authors_file(tmp_path / f"{prefix}{form}.pt", authors_state, prefix, form)
        out = import_official(source, str(roberta_dir), tmp_path / f"ckpt-{prefix}{form}", architecture=TINY,
                              log=lambda m: None)
        weights = load_file(str(out / "model.safetensors"))
        assert weights.keys() == reference.keys()
        assert all(torch.equal(weights[k], reference[k]) for k in reference), (prefix, form)


def test_checkpoint_records_its_source_and_the_released_heads(imported):
    model, _ = load_checkpoint(imported)
    assert model.config.labels == ["happy", "angry", "neutral", "sad"]
    assert model.config.ctc_vocab == [symbol for symbol, _ in sorted(WAV2VEC2_VOCAB_JSON.items(), key=lambda i: i[1])]
    assert model.config.max_audio_samples == 16_000
    source = checkpoint_extra(imported)["imported_from"]
    assert source["file"] == "fold1.pt" and len(source["sha256"]) == 64
    assert source["skipped_not_computed"] == sorted(NOT_COMPUTED)
    assert source["tensors"] == len(authors_shapes(**TINY_SHAPES)) - len(NOT_COMPUTED)


# ----- exported and recognised -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(imported) -> Path:
    from export.to_onnx import export_model_dir

    out = imported.parent / "model"
    export_model_dir(imported, out, log=lambda message: None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 2e-2), ("int8", 5e-2)])
def test_exported_and_recognised_as_the_authors_compute(model_dir, authors_state, roberta_dir, precision, tolerance):
    from mmer_rt import Recognizer
    from mmer_rt.modeldir import ModelManifest
    from mmer_rt.text import TextTokenizer, ctc_greedy_decode

    manifest = ModelManifest.read(model_dir)
    assert manifest.ctc_vocab[26:28] == ["K", "'"] and manifest.labels == ["happy", "angry", "neutral", "sad"]
    recognizer = Recognizer.from_dir(model_dir, device="cpu", precision=precision)
    texts = ["That is the best news I have heard all year.", "Why would anyone say something so cruel"]
    waves, batch = _batch(model_dir / "tokenizer.json", (2000, 1400), texts, seed=5)
    predictions = recognizer.predict_batch(list(zip(waves, texts)), sample_rate=16_000)
    text_model = _text_model(roberta_dir)
    tokenizer = TextTokenizer(model_dir / "tokenizer.json")
    for wave, text, prediction in zip(waves, texts, predictions):
        values = torch.from_numpy((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)).float()[None]
        ids = torch.from_numpy(tokenizer.encode_batch([text]).input_ids)
        theirs = authors_forward_alone(authors_state, TINY_AUDIO, text_model, values, ids, heads=4)
        expected = dict(zip(manifest.labels, theirs["logits"][0].softmax(-1).tolist()))
        assert max(abs(prediction.scores[k] - expected[k]) for k in expected) <= tolerance
        if precision == "fp32":
            assert prediction.label == max(expected, key=expected.get)
            # Without a transcript: the authors' CTC head read in wav2vec2's vocab.json order.
            vocab = sorted(WAV2VEC2_VOCAB_JSON, key=WAV2VEC2_VOCAB_JSON.get)
            transcript = ctc_greedy_decode(theirs["ctc"][0].numpy(), vocab=vocab)
            assert len(transcript) > 3
            assert recognizer.predict(wave, sample_rate=16_000).transcript == transcript


# ----- the released size: the exact format ----------------------------------------------------------------------
def test_the_doc_table_is_the_released_size():
    shapes = authors_shapes()
    assert len(shapes) == 296 and sum(math.prod(s) for s in shapes.values()) == 129_838_001


@pytest.fixture(scope="module")
def released_target():
    """The project tensors a released file must supply, by shape: the base model built without memory."""
    with torch.device("meta"):
        model = MMER.from_config(released_architecture().model_config(base_config().text, "roberta-base"),
                                 load_pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("text_encoder.")}


def _cheap_released_state():
    """The released keys and shapes, each tensor one element broadcast to its shape: a few kB on disk."""
    return collections.OrderedDict(
        (name, torch.full((1,) * len(shape), 0.5 + i).expand(shape)) for i, (name, shape) in
        enumerate(authors_shapes().items()))


@pytest.mark.parametrize("prefix, form", [("", "g_v"), ("module.", "g_v"), ("", "parametrizations"),
                                          ("module.", "parametrizations")])
def test_the_released_format_maps_onto_the_base_model(tmp_path, released_target, prefix, form):
    state = _cheap_released_state()
    source = save_authors_file(tmp_path / "released.pt", state, prefix, form)
    mapped = map_official(read_official(source), released_target, source)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == released_target
    by_value = {float(t.reshape(-1)[0]): k for k, t in mapped.items()}
    # Spot checks of the doc's data-flow paragraph, each tensor followed by its value.
    for theirs, ours in [
        ("model_mmi.vismap2text.weight", "fusion.audio_to_text_keys.weight"),
        ("model_mmi.vismap2text_v2.weight", "fusion.audio_to_text_queries.weight"),
        ("model_mmi.txt2img_attention.layer.0.attention.self.key.weight", "fusion.text_attends_audio.key.weight"),
        ("model_mmi.img2txt_attention.layer.0.attention.self.query.weight", "fusion.audio_attends_text.query.weight"),
        ("model_mmi.txt2txt_attention.layer.0.output.LayerNorm.bias",
         "fusion.text_attends_fused_audio.output_norm.bias"),
        ("model_mmi.downsample_final.bias", "fusion.text_pool_projection.bias"),
        ("model_mmi.classifier.linear3.weight", "fusion.classifier.weight"),
        ("model_mmi.wav2vec2.encoder.pos_conv_embed.conv.weight_g",
         "audio_encoder.wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
        ("orgin_linear_change.2.weight", "scl_head.2.weight"),
    ]:
        assert by_value[float(state[theirs].reshape(-1)[0])] == ours


@pytest.mark.slow
def test_the_command_imports_a_released_size_file(tmp_path, tiny_tokenizer_path):
    """The command as a user runs it (the released architecture, no reduction) on a file of the doc's exact keys and
    shapes saved from DataParallel with newer torch's weight-norm names; the checkpoint holds the base model
    (about 13 s and 1 GB here; the text encoder is a one-layer 768-wide RoBERTa standing in for roberta-base)."""
    import json

    from safetensors import safe_open

    state = _cheap_released_state()
    source = save_authors_file(tmp_path / "released.pt", state, "module.", "parametrizations")
    roberta = write_roberta_dir(tmp_path / "roberta768", tiny_tokenizer_path, 768, 1, 12)
    assert importer.main([str(source), "--text-pretrained", str(roberta), "--out", str(tmp_path / "ckpt")]) == 0
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["audio"]["hidden_size"] == 768 and config["audio"]["num_hidden_layers"] == 12
    assert config["audio"]["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2] and config["audio"]["conv_stride"] == [5, 2, 2, 2,
                                                                                                          2, 2, 2]
    assert config["fusion_heads"] == 12 and config["fusion_ffn"] == 3072 and config["max_audio_samples"] == 210_000
    assert config["labels"] == ["happy", "angry", "neutral", "sad"] and config["ctc_vocab"][26:28] == ["K", "'"]
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as weights:
        assert len([k for k in weights.keys() if not k.startswith("text_encoder.")]) == 294
        for theirs, ours in [
            ("model_mmi.wav2vec2.encoder.layers.11.feed_forward.output_dense.weight",
             "audio_encoder.wav2vec2.encoder.layers.11.feed_forward.output_dense.weight"),
            ("model_mmi.wav2vec2.encoder.pos_conv_embed.conv.weight_v",
             "audio_encoder.wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
            ("model_mmi.self_attention_v2.layer.0.attention.output.LayerNorm.weight",
             "fusion.text_self_attention.attention_norm.weight"),
            ("model_mmi.ctc_linear.weight", "ctc_head.weight"),
            ("augment_linear_change.0.bias", "acl_head.0.bias"),
        ]:
            assert torch.equal(weights.get_tensor(ours), state[theirs]), ours


def test_released_format_refuses_a_changed_head(tmp_path, released_target):
    state = _cheap_released_state()
    state["model_mmi.classifier.linear3.weight"] = torch.zeros(6, 1536)
    source = save_authors_file(tmp_path / "six.pt", state)
    with pytest.raises(OfficialCheckpointError,
                       match=r"wrong shapes \(1\): model_mmi.classifier.linear3.weight \(6, 1536\), "
                             r"expected \(4, 1536\)"):
        map_official(read_official(source), released_target, source)


# ----- bad files ----------------------------------------------------------------------------------------------
class _RunsCode:
    """Unpickled by a plain pickle.load, this calls ``how`` to create ``marker``."""

    def __init__(self, marker: Path, how: str):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "os.system":
            return (os.system, (f"touch {shlex.quote(str(self.marker))}",))
        return (Path.touch, (self.marker,))  # pickled as getattr(Path, "touch")


@pytest.mark.parametrize("how, named", [("os.system", "posix.system"), ("Path.touch", "getattr")])
def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path, authors_state, how, named):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": dict(authors_state), "payload": _RunsCode(marker, how)}, path)
    with pytest.raises(OfficialCheckpointError, match=rf"evil.pt: refused, the file asks to load {named}, which "
                                                      r"could run code.*weights_only=True"):
        read_official(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "zip-without-pickle"])
def test_damaged_files(tmp_path, authors_state, kind):
    path = tmp_path / f"{kind}.pt"
    good = save_authors_file(tmp_path / "good.pt", authors_state).read_bytes()
    if kind == "garbage":
        path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/readme.txt", "hello")
    with pytest.raises(OfficialCheckpointError, match=rf"{kind}.pt: cannot read it as a PyTorch checkpoint, the "
                                                      "file is damaged, truncated or of another kind"):
        read_official(path)


def test_missing_file(tmp_path):
    with pytest.raises(OfficialCheckpointError, match="nowhere.pt: no such file"):
        read_official(tmp_path / "nowhere.pt")


def test_foreign_files(tmp_path, authors_state, roberta_dir):
    from safetensors.torch import save_file

    bare = tmp_path / "bare.pt"
    torch.save(dict(authors_state), bare)  # a state dict without the {'state_dict': ...} wrapper
    with pytest.raises(OfficialCheckpointError, match=r"bare.pt: not an MMER authors' checkpoint: it holds "
                                                      rf"a dict of {len(authors_state)} entries "
                                                      r"\(augment_linear_change.0.bias, "):
        read_official(bare)
    tensors = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(tensors))
    with pytest.raises(OfficialCheckpointError, match="not an MMER authors' checkpoint"):
        read_official(tensors)
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(OfficialCheckpointError, match="it holds list, not a dict"):
        read_official(listed)
    ints = tmp_path / "ints.pt"
    torch.save({"state_dict": {"model_mmi.weights": torch.zeros(13, dtype=torch.long)}}, ints)
    with pytest.raises(OfficialCheckpointError, match=r"not floating-point tensors: model_mmi.weights"):
        read_official(ints)
    # Another network's weights in the authors' wrapper: wav2vec2 fine-tuned for CTC, say.
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"wav2vec2.encoder.layer_norm.weight": torch.ones(32),
                               "lm_head.weight": torch.ones(4, 32)}}, other)
    with pytest.raises(OfficialCheckpointError, match=r"unknown tensors \(2\): lm_head.weight, wav2vec2.encoder"
                                                      r".*missing tensors \(\d+\): augment_linear_change.0.bias"):
        import_official(other, str(roberta_dir), tmp_path / "out", architecture=TINY, log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_a_partial_file_lists_what_is_missing(tmp_path, authors_state, roberta_dir):
    partial = collections.OrderedDict(
        (k, v) for k, v in authors_state.items() if not k.startswith("model_mmi.txt2txt_attention.")
        and k != "model_mmi.gate.bias")
    source = save_authors_file(tmp_path / "partial.pt", partial, prefix="module.")
    with pytest.raises(OfficialCheckpointError) as caught:
        import_official(source, str(roberta_dir), tmp_path / "out", architecture=TINY, log=lambda m: None)
    message = str(caught.value)
    assert "missing tensors (17): model_mmi.gate.bias, model_mmi.txt2txt_attention.layer.0.attention.output" in message
    assert "unknown" not in message and "wrong shapes" not in message


def test_the_tensors_never_computed_are_skipped_and_nothing_else(tmp_path, authors_state, roberta_dir):
    without = collections.OrderedDict((k, v) for k, v in authors_state.items() if k not in NOT_COMPUTED)
    out = import_official(save_authors_file(tmp_path / "lean.pt", without), str(roberta_dir), tmp_path / "ckpt",
                          architecture=TINY, log=lambda m: None)
    assert checkpoint_extra(out)["imported_from"]["skipped_not_computed"] == []
    extra = collections.OrderedDict(authors_state)
    extra["model_mmi.output_attention_audio.0.weight"] = torch.zeros(16, 32)  # fuse_type 'att' only
    with pytest.raises(OfficialCheckpointError, match=r"unknown tensors \(1\): model_mmi.output_attention_audio"):
        import_official(save_authors_file(tmp_path / "att.pt", extra), str(roberta_dir), tmp_path / "att",
                        architecture=TINY, log=lambda m: None)


def test_duplicate_names_after_the_prefix_is_stripped(tmp_path, authors_state):
    doubled = collections.OrderedDict(authors_state)
    doubled["module.model_mmi.gate.bias"] = authors_state["model_mmi.gate.bias"]
    path = tmp_path / "doubled.pt"
    torch.save({"state_dict": doubled}, path)
    with pytest.raises(OfficialCheckpointError, match="two tensors stand for model_mmi.gate.bias"):
        read_official(path)


def test_text_encoder_problems(tmp_path, authors_state, roberta_dir, tiny_tokenizer_path):
    source = save_authors_file(tmp_path / "fold.pt", authors_state)
    with pytest.raises(OfficialCheckpointError, match=r"--text-pretrained .*nowhere: cannot load it"):
        import_official(source, str(tmp_path / "nowhere"), tmp_path / "a", architecture=TINY, log=lambda m: None)
    wide = write_roberta_dir(tmp_path / "wide", tiny_tokenizer_path, 48, 1, 4)
    with pytest.raises(OfficialCheckpointError, match="hidden size is 48, but the released fusion block reads 32-wide"):
        import_official(source, str(wide), tmp_path / "b", architecture=TINY, log=lambda m: None)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(OfficialCheckpointError, match="exists and is not an empty directory"):
        import_official(source, str(roberta_dir), tmp_path / "c", architecture=TINY, log=lambda m: None)


def test_errors_are_mmer_errors_and_the_command_says_error(tmp_path, capsys):
    assert issubclass(OfficialCheckpointError, MMERError)
    assert importer.main([str(tmp_path / "nowhere.pt"), "--text-pretrained", "roberta-base", "--out",
                          str(tmp_path / "out")]) == 1
    assert re.search(r"^error: .*nowhere.pt: no such file", capsys.readouterr().err, re.M)


# ----- the README's commands --------------------------------------------------------------------------------------
def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("## Using the authors' released checkpoints", 1)[1].split("\n## ", 1)[0]


def _readme_commands() -> list[list[str]]:
    return [shlex.split(line.strip()) for line in _readme_section().splitlines()
            if line.strip().startswith("python -m ")]


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path, monkeypatch, authors_state, roberta_dir):
    """The section's two commands, run through the modules' own main() with the user's downloaded file replaced by
    a synthetic one and roberta-base (a hub download) by the local RoBERTa; the network is built at the reduced
    width (``released_architecture`` patched to TINY), everything else as written."""
    import os

    from export import to_onnx
    from mmer_rt import Recognizer

    commands = _readme_commands()
    assert [c[:3] for c in commands] == [["python", "-m", "training.import_official"],
                                         ["python", "-m", "export.to_onnx"]]
    # The one placeholder, as the section declares it.
    placeholder = re.search(r"`(\S+\.pt)` stands for the file you downloaded", _readme_section()).group(1)
    assert placeholder in commands[0]
    save_authors_file(tmp_path / placeholder, authors_state, prefix="module.")
    monkeypatch.setattr(importer, "released_architecture", lambda: TINY)
    monkeypatch.chdir(tmp_path)
    mains = {"training.import_official": importer.main, "export.to_onnx": to_onnx.main}
    for command in commands:
        argv = [str(roberta_dir) if arg == "roberta-base" else arg for arg in command[3:]]
        assert mains[command[2]](argv) == 0
    model_dir = Path(commands[1][commands[1].index("--out") + 1])
    assert (tmp_path / model_dir / "mmer.json").is_file() and not os.path.isabs(model_dir)
    prediction = Recognizer.from_dir(tmp_path / model_dir, device="cpu").predict(
        np.random.default_rng(0).standard_normal(4000).astype(np.float32), sample_rate=16_000,
        text="I can't believe you did that!")
    assert prediction.label in ("happy", "angry", "neutral", "sad")


# ----- the CTC vocabulary's order: new models get wav2vec2's, older checkpoints and model directories keep theirs ----
@pytest.mark.slow
def test_an_older_checkpoint_keeps_its_ctc_order_through_export_and_decoding(tmp_path, tiny_tokenizer_path):
    """A checkpoint written before configs recorded the vocabulary was trained on the legacy order (K and the
    apostrophe swapped); it is exported with that order, and a model directory decodes with the order it records."""
    import dataclasses
    import json
    import shutil

    from export.to_onnx import export_model_dir
    from mmer_rt import Recognizer
    from mmer_rt.modeldir import ModelManifest
    from mmer_rt.text import CTC_VOCAB
    from training.checkpoint import LEGACY_CTC_VOCAB, save_checkpoint

    torch.manual_seed(0)
    model = MMER.from_config(dataclasses.replace(tiny_config(), max_audio_samples=16_000)).eval()
    with torch.no_grad():  # a CTC head that emits symbol 26 on every frame
        model.ctc_head.weight.zero_()
        model.ctc_head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(26), 32) * 10.0)
    checkpoint = save_checkpoint(model, tmp_path / "old", tiny_tokenizer_path)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["ctc_vocab"] == list(CTC_VOCAB) and CTC_VOCAB[26] == "K"
    del config["ctc_vocab"]  # as written before the field existed
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(checkpoint)[0].config.ctc_vocab == list(LEGACY_CTC_VOCAB)

    old_dir = tmp_path / "old-model"
    export_model_dir(checkpoint, old_dir, precisions=["fp32"], log=lambda message: None)
    assert ModelManifest.read(old_dir).ctc_vocab == list(LEGACY_CTC_VOCAB)
    new_dir = tmp_path / "new-model"
    shutil.copytree(old_dir, new_dir)
    manifest = json.loads((new_dir / "mmer.json").read_text())
    manifest["ctc_vocab"] = list(CTC_VOCAB)
    (new_dir / "mmer.json").write_text(json.dumps(manifest))

    audio = np.random.default_rng(0).standard_normal(3000).astype(np.float32)
    transcripts = {name: Recognizer.from_dir(folder, device="cpu").predict(audio, sample_rate=16_000).transcript
                   for name, folder in (("old", old_dir), ("new", new_dir))}
    assert transcripts == {"old": "'", "new": "K"}
