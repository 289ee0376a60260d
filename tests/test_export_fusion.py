"""onnxruntime's transformer fusions on the encoders at real widths (768 hidden, 12 heads) with 2 layers."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from export import graphs
from export.optimize import optimize_encoder
from training.model import MMER, base_config

LAYERS = 2


@pytest.fixture(scope="module")
def base_width_model() -> MMER:
    torch.manual_seed(0)
    config = base_config()
    for encoder in (config.audio, config.text):
        encoder["num_hidden_layers"] = LAYERS
    config.text["vocab_size"] = 1000  # the embedding table's size does not change the graph, only the init time
    return graphs.exportable_copy(MMER.from_config(config).eval())


@pytest.fixture(scope="module")
def fused(base_width_model, tmp_path_factory) -> dict:
    """Per encoder: (fused operator counts for the CPU, path of that graph, example inputs, counts for the GPU)."""
    folder = tmp_path_factory.mktemp("fusion")
    examples = graphs.example_inputs(base_width_model)
    results = {}
    for spec, config in zip(graphs.GRAPH_SPECS[:2], (base_width_model.config.audio, base_width_model.config.text)):
        traced = graphs.export_graph(base_width_model, spec, examples[spec.name], folder / f"{spec.name}.onnx")
        optimized = folder / f"{spec.name}.fused.onnx"
        shape = (config["num_attention_heads"], config["hidden_size"])
        counts = optimize_encoder(traced, optimized, *shape)
        gpu_counts = optimize_encoder(traced, folder / f"{spec.name}.gpu.onnx", *shape, skip_layer_norm=True)
        results[spec.name] = (counts, optimized, examples[spec.name], gpu_counts)
    return results


@pytest.mark.parametrize("graph", ["audio_encoder", "text_encoder"])
def test_layer_norms_and_gelus_fuse_once_per_layer(fused, graph):
    counts, gpu_counts = fused[graph][0], fused[graph][3]
    # Two residual LayerNorms per layer; wav2vec2's post-LN stack adds one after the positional convolution. For
    # the GPU each absorbs its residual Add; on the CPU they stay LayerNormalization, with the feature
    # projection's (audio) or the embeddings' (text) LayerNorm beside them.
    residual = 2 * LAYERS + (graph == "audio_encoder")
    assert gpu_counts["SkipLayerNormalization"] == residual and gpu_counts["LayerNormalization"] == 1
    assert counts["SkipLayerNormalization"] == 0 and counts["LayerNormalization"] == residual + 1
    assert counts["BiasGelu"] == gpu_counts["BiasGelu"] == LAYERS


@pytest.mark.parametrize("graph", ["audio_encoder", "text_encoder"])
def test_attention_fuses_once_per_layer(fused, graph):
    assert fused[graph][0]["Attention"] == LAYERS


@pytest.mark.parametrize("graph", ["audio_encoder", "text_encoder"])
def test_fused_graph_matches_pytorch_on_a_padded_batch(fused, base_width_model, graph):
    _, path, inputs, _ = fused[graph]
    spec = next(s for s in graphs.GRAPH_SPECS if s.name == graph)
    with torch.no_grad():
        expected = spec.wrapper(base_width_model)(*inputs)
    expected = expected[0] if isinstance(expected, tuple) else expected
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {name: t.numpy() for name, t in zip(spec.inputs, inputs)})[0]
    mask = inputs[1].numpy().astype(bool) if graph == "text_encoder" else \
        session.run(["frame_mask"], {name: t.numpy() for name, t in zip(spec.inputs, inputs)})[0].astype(bool)
    assert np.abs(actual[mask] - expected.numpy()[mask]).max() < 1e-4


def test_exportable_copy_folds_weight_norm_and_leaves_the_model_alone(make_tiny_model, tiny_batch):
    from torch.nn.utils import parametrize

    model = make_tiny_model()
    copy = graphs.exportable_copy(model)
    assert not any(parametrize.is_parametrized(m) for m in copy.modules())
    assert any(parametrize.is_parametrized(m) for m in model.modules())
    inputs = (tiny_batch["input_values"], tiny_batch["sample_mask"], tiny_batch["input_ids"],
              tiny_batch["attention_mask"])
    with torch.no_grad():
        assert torch.allclose(model(*inputs).logits, copy(*inputs).logits, atol=1e-5)
