"""python -m export.to_onnx on a tiny checkpoint: the model directory, its graphs, parity, safety and errors."""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from export.errors import ExportError, ParityError
from export.parity import SPEECH_BATCH, audio_feeds_of, Probes, check_report, make_probes, run_graphs, speech_probes
from export.to_onnx import export_model_dir, main
from mmer_rt.audio import pad_batch
from mmer_rt.corpus import read_manifest
from mmer_rt.modeldir import (
    AUDIO_INPUTS, AUDIO_OUTPUTS, FUSION_INPUTS, FUSION_OUTPUTS, GRAPH_NAMES, PRECISIONS, TEXT_INPUTS, TEXT_OUTPUTS,
    ModelManifest, verified_graph_path,
)
from mmer_rt.text import TextTokenizer
from training.checkpoint import CheckpointError, save_checkpoint
from training.model import MMER, tiny_config

CONTRACT = {
    "audio_encoder": (AUDIO_INPUTS, AUDIO_OUTPUTS),
    "text_encoder": (TEXT_INPUTS, TEXT_OUTPUTS),
    "fusion": (FUSION_INPUTS, FUSION_OUTPUTS),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer_path) -> Path:
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config(), max_audio_samples=16_000)
    model = MMER.from_config(config).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("export") / "checkpoint", tiny_tokenizer_path)


@pytest.fixture(scope="module")
def model_dir(checkpoint) -> Path:
    out = checkpoint.parent / "model"
    export_model_dir(checkpoint, out, log=lambda message: None)
    return out


def _sessions(model_dir: Path, manifest: ModelManifest, precision: str) -> dict:
    return {
        name: onnxruntime.InferenceSession(
            str(verified_graph_path(model_dir, entry)), providers=["CPUExecutionProvider"])
        for name, entry in manifest.variants[precision].graphs.items()
    }


def test_model_dir_holds_every_variant_with_the_graph_contract(model_dir):
    manifest = ModelManifest.read(model_dir)
    assert list(manifest.variants) == list(PRECISIONS)
    assert (model_dir / manifest.tokenizer).is_file()
    assert set(manifest.versions) >= {"torch", "transformers", "onnx", "onnxruntime"}
    assert manifest.max_audio_samples == 16_000 and manifest.extra["max_text_tokens"] == 128
    assert manifest.extra["min_audio_samples"] == 60  # tiny front end: kernels (10, 3, 3), strides (5, 4, 4)
    for precision in PRECISIONS:
        for name, session in _sessions(model_dir, manifest, precision).items():
            inputs, outputs = CONTRACT[name]
            assert [i.name for i in session.get_inputs()] == list(inputs)
            assert [o.name for o in session.get_outputs()] == list(outputs)
            assert manifest.variants[precision].graphs[name].opset == 17
    assert not list(model_dir.rglob(".traced")) and not list(model_dir.parent.glob(".model.partial-*"))


def test_manifest_records_parity_within_tolerance_for_every_variant(model_dir):
    manifest = ModelManifest.read(model_dir)
    for precision, variant in manifest.variants.items():
        report = variant.parity
        assert report["provider"] == "CPUExecutionProvider"
        assert report["max_abs_probability"] <= report["tolerance_probability"]
        assert report["frame_mask_equal"] and 0.0 <= report["top1_agreement"] <= 1.0
    assert manifest.variants["fp32"].parity["max_abs_probability"] <= 1e-4
    assert manifest.variants["fp32"].parity["tolerance_probability"] == 1e-4


def test_manifest_records_the_fused_operators(model_dir):
    fused = ModelManifest.read(model_dir).extra["fused_ops"]
    # The CPU graphs keep each residual Add apart from its LayerNorm (onnxruntime's CPU SkipLayerNormalization is
    # the slower of the two); the fp16 graphs, for CUDA, fuse them: 2 per layer, plus wav2vec2's post-LN stack's
    # LayerNorm after the positional convolution. Unfused: those, plus the feature projection's or the embeddings'.
    for precision in ("fp32", "int8"):
        assert fused[precision]["text_encoder"] == {
            "Attention": 2, "SkipLayerNormalization": 0, "LayerNormalization": 5, "BiasGelu": 2}
        assert fused[precision]["audio_encoder"] == {
            "Attention": 2, "SkipLayerNormalization": 0, "LayerNormalization": 6, "BiasGelu": 2}
    assert fused["fp16"]["text_encoder"] == {
        "Attention": 2, "SkipLayerNormalization": 4, "LayerNormalization": 1, "BiasGelu": 2}
    assert fused["fp16"]["audio_encoder"] == {
        "Attention": 2, "SkipLayerNormalization": 5, "LayerNormalization": 1, "BiasGelu": 2}


def _ops_in(path: Path, scope: str) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node if node.name.startswith(scope))


def test_int8_quantises_matmuls_and_attention_and_leaves_the_convolutions_in_fp32(model_dir):
    manifest = ModelManifest.read(model_dir)
    int8 = model_dir / manifest.variants["int8"].graphs["audio_encoder"].file
    # Each of the 2 transformer layers' fused Attention becomes QAttention; the tiny front end's 3 conv layers
    # stay fp32 (the first as a MatMul on the waveform frames, the others as Conv), as does the positional conv.
    assert _ops_in(int8, "")["QAttention"] == 2 and _ops_in(int8, "")["Attention"] == 0
    assert _ops_in(int8, "/front_end/")["MatMulInteger"] == 0 and _ops_in(int8, "/front_end/first/")["MatMul"]
    assert _ops_in(int8, "/front_end/rest.")["Conv"] == 2 and _ops_in(int8, "")["MatMulInteger"] > 0
    # The text and fusion graphs stay fp32 arithmetic inside the int8 variant (export/precision.py INT8_GRAPHS); the
    # fusion graph is the fp32 file, the text graph differs only in its word-embedding table's storage (below).
    assert manifest.extra["int8_graphs"] == ["audio_encoder"]
    assert manifest.variants["int8"].graphs["fusion"].sha256 == manifest.variants["fp32"].graphs["fusion"].sha256
    for name in ("text_encoder", "fusion"):
        assert _ops_in(model_dir / manifest.variants["int8"].graphs[name].file, "")["MatMulInteger"] == 0


def test_int8_text_graph_stores_its_word_embeddings_in_fp16_and_nothing_else(model_dir):
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    manifest = ModelManifest.read(model_dir)
    table = "text_encoder.model.embeddings.word_embeddings.weight"
    assert manifest.extra["fp16_tables"] == {"int8": {"text_encoder": [table]}}
    fp32, int8 = (onnx.load(str(model_dir / manifest.variants[v].graphs["text_encoder"].file)) for v in ("fp32", "int8"))
    before = {t.name: t for t in fp32.graph.initializer}
    after = {t.name: t for t in int8.graph.initializer}
    assert before.keys() == after.keys()
    for name in before:
        if name == table:
            assert after[name].data_type == TensorProto.FLOAT16
            np.testing.assert_array_equal(numpy_helper.to_array(after[name]),
                                          numpy_helper.to_array(before[name]).astype(np.float16))
        else:
            assert after[name] == before[name], name
    # One node more: the Cast of the gathered rows back to fp32.
    assert collections.Counter(n.op_type for n in int8.graph.node) - collections.Counter(
        n.op_type for n in fp32.graph.node) == collections.Counter({"Cast": 1})
    # fp32 arithmetic on rows rounded to 11 bits: the token embeddings move by about that much, relative.
    ids = np.random.default_rng(0).integers(3, 100, size=(3, 9)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    runs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            for m in (fp32, int8)]
    scale = np.abs(runs[0]).max()
    assert 0 < np.abs(runs[1] - runs[0]).max() < 2e-3 * scale


def test_fp16_embedding_table_leaves_a_shared_table_and_other_gathers_alone(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from export.precision import fp16_embedding_table

    words = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(6, 2) / 7, "words")
    positions = numpy_helper.from_array(np.ones((4, 2), np.float32), "positions")
    shared = numpy_helper.from_array(np.ones((6, 2), np.float32), "shared")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["words", "input_ids"], ["w"], name="word_gather"),
         helper.make_node("Gather", ["positions", "position_ids"], ["p"], name="position_gather"),
         helper.make_node("Gather", ["shared", "input_ids"], ["s"], name="shared_gather"),
         helper.make_node("Identity", ["shared"], ["shared_copy"], name="also_reads_shared"),
         helper.make_node("Sum", ["w", "p", "s"], ["out"], name="sum")],
        "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [3]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 2]),
         helper.make_tensor_value_info("shared_copy", TensorProto.FLOAT, [6, 2])],
        [words, positions, shared])
    source = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    assert fp16_embedding_table(source, tmp_path / "out.onnx") == ["words"]
    out = onnx.load(str(tmp_path / "out.onnx"))
    types = {t.name: t.data_type for t in out.graph.initializer}
    assert types == {"words": TensorProto.FLOAT16, "positions": TensorProto.FLOAT, "shared": TensorProto.FLOAT}
    onnx.checker.check_model(out, full_check=True)
    import onnxruntime as ort

    feeds = {"input_ids": np.array([5, 0, 3]), "position_ids": np.array([0, 1, 2])}
    got = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"]).run(["out"], feeds)[0]
    expected = numpy_helper.to_array(words).astype(np.float16).astype(np.float32)[[5, 0, 3]] + 2
    np.testing.assert_array_equal(got, expected)


def test_int8_keeps_the_nodes_it_is_told_to_in_fp32(model_dir, tmp_path):
    from export.precision import int8_node_groups, to_int8

    manifest = ModelManifest.read(model_dir)
    fp32 = model_dir / manifest.variants["fp32"].graphs["audio_encoder"].file
    groups = int8_node_groups(onnx.load(str(fp32), load_external_data=False))
    assert {"feature projection", "layer 0 attention", "layer 0 feed-forward", "layer 1 attention",
            "layer 1 feed-forward"} <= set(groups)
    kept = groups["layer 1 feed-forward"] + groups["layer 0 attention"]
    out = to_int8(fp32, tmp_path / "audio.int8.onnx", keep_fp32=kept)
    nodes = {node.name: node.op_type for node in onnx.load(str(out)).graph.node}
    assert all(nodes.get(name) in ("MatMul", "Attention") for name in kept), {name: nodes.get(name) for name in kept}
    assert _ops_in(out, "")["QAttention"] == 1 and _ops_in(out, "")["Attention"] == 1
    # The layer-0 feed-forward block, not kept, is quantised.
    assert not any(nodes.get(name) == "MatMul" for name in groups["layer 0 feed-forward"])


@pytest.mark.parametrize("tolerance", [1e-9, 10.0])
def test_int8_logit_tolerance_keeps_the_fewest_groups_in_fp32_that_meet_it(checkpoint, tmp_path, tolerance):
    lines = []
    manifest = export_model_dir(checkpoint, tmp_path / "model", precisions=["fp32", "int8"], log=lines.append,
                                int8_logit_tolerance=tolerance)
    kept = manifest.extra["int8_kept_fp32"]
    assert kept["logit_tolerance"] == tolerance
    audio = tmp_path / "model" / manifest.variants["int8"].graphs["audio_encoder"].file
    if tolerance == 10.0:  # anything int8 does is within it: every group stays int8
        assert kept["groups"] == [] and _ops_in(audio, "")["QAttention"] == 2
    else:  # not even fp32 is within 1e-9 of PyTorch: every group is kept, and the graph holds no int8 node
        assert len(kept["groups"]) >= 5 and "layer 1 feed-forward" in kept["groups"]
        ops = _ops_in(audio, "")
        assert ops["QAttention"] == 0 and ops["MatMulInteger"] == 0 and ops["DynamicQuantizeMatMul"] == 0
        # What is left is the fp32 graphs' own difference and the text graph's fp16 word-embedding table.
        assert manifest.variants["int8"].parity["max_abs_logit"] < 1e-4
        assert any("kept in fp32" in line and "still over" in line for line in lines)


def test_a_bad_int8_logit_tolerance_is_refused(checkpoint, tmp_path):
    with pytest.raises(ExportError, match="int8-logit-tolerance"):
        export_model_dir(checkpoint, tmp_path / "model", precisions=["int8"], int8_logit_tolerance=0.0)


def test_fp16_audio_graph_holds_no_conv_and_matches_fp32(model_dir):
    manifest = ModelManifest.read(model_dir)
    fp16 = model_dir / manifest.variants["fp16"].graphs["audio_encoder"].file
    fp32 = model_dir / manifest.variants["fp32"].graphs["audio_encoder"].file
    # For CUDA no Conv at all (onnxruntime 1.31 runs CUDA Conv on cuDNN's fallback engines): the tiny front end's 2
    # later layers are MatMuls, the positional convolution (16 taps, chunks of 16) one grouped MatMul. The CPU
    # graphs keep the Conv layers: 2 in the front end and the positional one.
    assert _ops_in(fp16, "")["Conv"] == 0 and _ops_in(fp16, "/front_end/rest.")["MatMul"] == 2
    assert _ops_in(fp16, "/positional/")["MatMul"] == 1
    assert _ops_in(fp32, "")["Conv"] == 3 and _ops_in(fp32, "/front_end/rest.")["MatMul"] == 0
    # Its outputs against the fp32 graph's (Conv) on the CPU provider, on a padded batch of loud and quiet rows.
    rng = np.random.default_rng(3)
    values, mask = pad_batch([rng.standard_normal(n).astype(np.float32) * scale
                              for n, scale in ((16_000, 1.0), (5_000, 30.0), (700, 1e-3))])
    feeds = audio_feeds_of(Probes(values, mask, None, None, ""), AUDIO_INPUTS)
    sessions = _sessions(model_dir, manifest, "fp16"), _sessions(model_dir, manifest, "fp32")
    half, full = (s["audio_encoder"].run(None, feeds) for s in sessions)
    assert np.array_equal(half[1], full[1])  # frame masks
    for got, want in ((half[0], full[0]), (half[2], full[2])):
        assert np.isfinite(got).all() and np.abs(got - want).max() < 2e-2 * np.abs(want).max()


def test_fp32_audio_graph_has_the_group_norm_folded(model_dir):
    fp32 = model_dir / ModelManifest.read(model_dir).variants["fp32"].graphs["audio_encoder"].file
    ops = _ops_in(fp32, "")
    assert ops["Pow"] == 0 and ops["GroupNormalization"] == 0 and ops["InstanceNormalization"] == 0
    assert _ops_in(fp32, "/front_end/first/")["MatMul"] >= 2  # the frames' covariance and the scaled kernel


def test_fp16_keeps_the_waveform_layer_in_fp32(model_dir):
    manifest = ModelManifest.read(model_dir)
    graph = onnx.load(str(model_dir / manifest.variants["fp16"].graphs["audio_encoder"].file)).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    first_layer = [initializers[name] for node in graph.node if node.name.startswith("/front_end/first/")
                   for name in node.input if name in initializers]
    float_weights = [t for t in first_layer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert float_weights and all(t.data_type == onnx.TensorProto.FLOAT for t in float_weights)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)  # the rest is fp16


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_padded_batch_matches_each_utterance_alone(model_dir, tiny_tokenizer_path, precision):
    manifest = ModelManifest.read(model_dir)
    sessions = _sessions(model_dir, manifest, precision)
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (3000, 16_000, 7000)]
    texts = ["hello", "excuse me where is the station", "we lost the house and everything"]
    tokenizer = TextTokenizer(tiny_tokenizer_path)

    def logits(rows: list[int]) -> np.ndarray:
        values, mask = pad_batch([waves[r] for r in rows])
        encoded = tokenizer.encode_batch([texts[r] for r in rows])
        probes = Probes(values, mask, encoded.input_ids, encoded.attention_mask, "")
        return run_graphs(sessions, probes)["logits"]

    batched = logits([0, 1, 2])
    alone = np.concatenate([logits([row]) for row in range(3)])
    assert np.abs(batched - alone).max() < (1e-5 if precision == "fp32" else 2e-3)


def test_fp16_handles_the_shortest_audio_beside_a_long_row(model_dir, tiny_tokenizer_path):
    # The time-major front end's strided frames at their edge: a row of exactly the receptive field (one frame)
    # padded beside a long one, against fp32 (Conv front end).
    manifest = ModelManifest.read(model_dir)
    shortest = int(manifest.extra["min_audio_samples"])
    rng = np.random.default_rng(2)
    values, mask = pad_batch([rng.standard_normal(n).astype(np.float32) for n in (shortest, 9_000)])
    assert mask.sum(-1).tolist() == [shortest, 9_000]
    encoded = TextTokenizer(tiny_tokenizer_path).encode_batch(["hello", "excuse me where is the station"])
    probes = Probes(values, mask, encoded.input_ids, encoded.attention_mask, "")
    outputs = {precision: run_graphs(_sessions(model_dir, manifest, precision), probes) for precision in ("fp32", "fp16")}
    assert outputs["fp16"]["frame_mask"].sum(-1)[0] == outputs["fp32"]["frame_mask"].sum(-1)[0] == 1
    assert np.isfinite(outputs["fp16"]["logits"]).all()
    assert np.abs(outputs["fp16"]["logits"] - outputs["fp32"]["logits"]).max() < 2e-2


def test_probes_have_several_lengths_and_loud_clips(tiny_tokenizer_path):
    probes = make_probes(tiny_tokenizer_path, 16_000, max_samples=200_000)
    lengths = probes.sample_mask.sum(-1)
    assert len(set(lengths.tolist())) == len(lengths) >= 5
    assert lengths.max() == 32_000  # capped at 2 s
    assert probes.attention_mask.sum(-1).min() >= 3  # <s>, at least one word, </s>


def test_speech_probes_spread_over_the_manifest_in_batches_of_similar_length(synthetic_corpus, tiny_tokenizer_path):
    batches, description = speech_probes(synthetic_corpus, tiny_tokenizer_path, max_samples=16_000, min_samples=60,
                                         max_tokens=128, count=20)
    assert description == f"20 utterances of {synthetic_corpus.name} with their transcripts"
    lengths = np.concatenate([batch.sample_mask.sum(-1) for batch in batches])
    assert len(lengths) == 20 and [len(b.input_values) for b in batches] == [SPEECH_BATCH, SPEECH_BATCH, 4]
    assert (np.diff(lengths) >= 0).all() and lengths.max() == 16_000  # sorted by length, cut to max_samples
    assert all(batch.attention_mask.sum(-1).min() >= 3 for batch in batches)  # real transcripts, tokenised
    # A count beyond the manifest takes every utterance once; clips under the receptive field are left out.
    everything, _ = speech_probes(synthetic_corpus, tiny_tokenizer_path, 16_000, 60, 128, count=1000)
    assert sum(len(b.input_values) for b in everything) == len(read_manifest(synthetic_corpus))
    with pytest.raises(ExportError, match="receptive field"):
        speech_probes(synthetic_corpus, tiny_tokenizer_path, 16_000, min_samples=10**9, max_tokens=128, count=4)


def test_export_measures_parity_on_speech_too(checkpoint, synthetic_corpus, tmp_path, capsys):
    out = tmp_path / "model"
    assert main([str(checkpoint), "--out", str(out), "--precision", "fp32,int8",
                 "--speech-manifest", str(synthetic_corpus), "--speech-probes", "12"]) == 0
    manifest = ModelManifest.read(out)
    for precision, variant in manifest.variants.items():
        speech = variant.parity["speech"]
        assert speech["clips"] == 12 and speech["frame_mask_equal"]
        assert speech["max_abs_probability"] <= variant.parity["tolerance_probability"]
    assert manifest.variants["fp32"].parity["speech"]["max_abs_probability"] < 1e-4
    assert f"12 utterances of {synthetic_corpus.name}" in manifest.extra["parity_probes"]
    assert "on 12 speech clips" in capsys.readouterr().err


def test_a_variant_that_fails_only_on_speech_stops_the_export():
    report = {"max_abs_probability": 1e-3, "max_abs_logit": 1e-2, "top1_agreement": 1.0, "frame_mask_equal": True,
              "speech": {"max_abs_probability": 0.9, "max_abs_logit": 4.0, "top1_agreement": 0.89,
                         "frame_mask_equal": True}}
    with pytest.raises(ParityError, match="int8 variant does not match the PyTorch fp32 model on the speech probes"):
        check_report("int8", report, tolerance=0.05)
    check_report("int8", {**report, "speech": {**report["speech"], "max_abs_probability": 0.01}}, tolerance=0.05)


@pytest.mark.parametrize("argv, error", [
    (["--speech-manifest", "missing.jsonl"], "manifest not found: missing.jsonl"),
    (["--speech-manifest", "missing.jsonl", "--speech-probes", "0"], "give a positive number of utterances"),
])
def test_cli_reports_a_bad_speech_manifest_without_traceback(checkpoint, tmp_path, capsys, argv, error):
    assert main([str(checkpoint), "--out", str(tmp_path / "model"), *argv]) == 1
    assert error in capsys.readouterr().err and not (tmp_path / "model").exists()


def test_same_checkpoint_gives_same_graph_hashes(checkpoint, model_dir):
    again = checkpoint.parent / "model_again"
    export_model_dir(checkpoint, again, log=lambda message: None)
    first, second = ModelManifest.read(model_dir), ModelManifest.read(again)
    for precision in PRECISIONS:
        for name in GRAPH_NAMES:
            assert first.variants[precision].graphs[name].sha256 == second.variants[precision].graphs[name].sha256


def test_non_empty_out_dir_needs_force(checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty.*--force"):
        export_model_dir(checkpoint, out, precisions=["fp32"], log=lambda message: None)
    assert (out / "notes.txt").read_text() == "mine"
    export_model_dir(checkpoint, out, precisions=["fp32"], force=True, log=lambda message: None)
    assert not (out / "notes.txt").exists()
    assert list(ModelManifest.read(out).variants) == ["fp32"]


def test_exceeding_a_tolerance_stops_the_export_and_writes_nothing(checkpoint, tmp_path):
    out = tmp_path / "model"
    with pytest.raises(ParityError, match="int8 variant"):
        export_model_dir(checkpoint, out, precisions=["fp32", "int8"], tolerances={"int8": 1e-9},
                         log=lambda message: None)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_model_dir(checkpoint, tmp_path, capsys):
    out = tmp_path / "model"
    assert main([str(checkpoint), "--out", str(out), "--precision", "int8"]) == 0
    assert list(ModelManifest.read(out).variants) == ["int8"]
    assert "int8: max |delta probability|" in capsys.readouterr().err


def _foreign_checkpoint(path: Path) -> Path:
    path.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (path / name).write_text("{}")
    (path / "config.json").write_text(json.dumps({"format": "something-else"}))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "checkpoint directory not found"),
    (lambda tmp: _foreign_checkpoint(tmp / "foreign"), "not an MMER checkpoint"),
])
def test_cli_reports_bad_checkpoints_without_traceback(tmp_path, capsys, make, message):
    out = tmp_path / "model"
    assert main([str(make(tmp_path)), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".model.partial-*"))


def test_damaged_weights_raise_checkpoint_error(checkpoint, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in checkpoint.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    (damaged / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        export_model_dir(damaged, tmp_path / "model", log=lambda message: None)


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp8"], "--precision takes"),
    (["--tolerance", "fp16"], "expected PRECISION=NUMBER"),
    (["--tolerance", "bf16=0.1"], "must be one of"),
])
def test_cli_rejects_bad_options(checkpoint, tmp_path, capsys, argv, message):
    assert main([str(checkpoint), "--out", str(tmp_path / "model"), *argv]) == 1
    assert message in capsys.readouterr().err
