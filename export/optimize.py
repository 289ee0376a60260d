"""onnxruntime's transformer fusions (Attention, BiasGelu, LayerNormalization, SkipLayerNormalization on GPUs)
applied to an encoder graph."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import onnx

# The fused operators that matter for speed, counted in the manifest and by the tests.
FUSED_OPS = ("Attention", "SkipLayerNormalization", "LayerNormalization", "BiasGelu")


def optimize_encoder(source: Path, target: Path, num_heads: int, hidden_size: int,
                     skip_layer_norm: bool = False) -> dict[str, int]:
    """Fuse ``source`` (a legacy-exported encoder) into ``target``; returns the count of each operator in FUSED_OPS.

    model_type "bert" is the one that keeps the attention mask (there is no wav2vec2 type; "vit" fuses
    wav2vec2's attention but drops the mask). Both of our encoders are post- or pre-LN BERT-style stacks.

    ``skip_layer_norm`` folds each residual Add (and bias) into its LayerNorm: right for the CUDA provider, but
    onnxruntime 1.32's CPU SkipLayerNormalization kernel took 0.8 ms on a (250, 768) input where Add, Add and
    LayerNormalization took 0.12 ms (2 threads; ``python -m benchmarks.skip_layer_norm``), so the CPU graphs
    (fp32, int8) keep them apart.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # Symbolic shape inference (sympy) took 25 of 28 s on a 2-layer wav2vec2 graph and changed no fusion count:
    # it only checks that a SkipLayerNormalization's two inputs have equal shapes, which our residuals always do.
    options.enable_shape_inference = False
    # The raw 0/1 mask instead of a per-row "mask index" length: exact for any mask, not only right padding.
    options.use_raw_attention_mask(True)
    options.enable_skip_layer_norm = skip_layer_norm
    options.enable_bias_skip_layer_norm = skip_layer_norm
    with quiet_loggers("onnxruntime.transformers", "fusion_base", "onnx_model", "onnx_model_bert", "fusion_utils", "fusion_skiplayernorm"):
        optimized = optimize_model(
            str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
            # opt_level 1: onnxruntime's basic rewrites (constant folding, redundant Casts) run first; the
            # Attention patterns of transformers 5's mask only match after them.
            optimization_options=options, opt_level=1,
        )
    optimized.save_model_to_file(str(target))
    return fused_op_counts(optimized.model)


def fused_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each type in FUSED_OPS ``model`` holds."""
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return {op: counts[op] for op in FUSED_OPS}


class quiet_loggers:
    """Lower the optimizer's chatty loggers to errors for the duration of a with-block."""

    def __init__(self, *names: str):
        self._loggers = [logging.getLogger(name) for name in names]
        self._levels: list[int] = []

    def __enter__(self):
        self._levels = [logger.level for logger in self._loggers]
        for logger in self._loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for logger, level in zip(self._loggers, self._levels):
            logger.setLevel(level)
