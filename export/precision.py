"""Precision variants of an fp32 graph: fp16 for GPUs, dynamically quantised int8 for CPUs."""

from __future__ import annotations

from pathlib import Path

import onnx

from .optimize import quiet_loggers

# Kept in fp32 in the fp16 variant, by operator type: normalisations whose variance sum overflows or loses
# precision in fp16 (fairseq keeps wav2vec2's front-end GroupNorm in fp32 for this reason), as measured in
# export/DESIGN.md. Added to onnxruntime's default block list.
FP16_BLOCKED_OPS = ("GroupNormalization", "InstanceNormalization")
# Kept in fp32 in the fp16 variant, by node-name scope: the audio encoder's own arithmetic outside wav2vec2's
# submodules, i.e. the masked GroupNorm of the first conv layer (sums of squares over up to 42,000 positions
# per channel), the length and mask computations. Cheap element-wise work; fp16 would gain nothing there.
FP16_BLOCKED_SCOPES = ("/audio_encoder/",)


def to_fp16(source: Path, target: Path) -> Path:
    """Convert ``source`` to fp16 with fp32 inputs and outputs, the blocked operators and scopes left in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(source)))
    blocked_nodes = [node.name for node in model.nodes() if _in_blocked_scope(node.name)]
    model.convert_float_to_float16(
        # onnx's own shape inference suffices for the types the converter needs; the symbolic one costs minutes.
        use_symbolic_shape_infer=True,
        keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_BLOCKED_OPS),
        node_block_list=blocked_nodes,
    )
    model.save_model_to_file(str(target))
    return target


def to_int8(source: Path, target: Path) -> Path:
    """Quantise the MatMul weights of ``source`` to int8 (activations quantised per batch at run time).

    Only MatMul: quantising the convolutions too made the audio encoder slower than PyTorch on AVX2 CPUs.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The root logger: the quantizer advises pre-processing (shape inference) through the root logger on every graph;
    # DefaultTensorType below is what stands in for it on fused graphs.
    with quiet_loggers(""):
        quantize_dynamic(
            str(source), str(target), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
            # The optimizer's fused com.microsoft operators carry no type information the quantizer can infer.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return target


def _in_blocked_scope(node_name: str) -> bool:
    """True for nodes directly in a blocked scope, not in a submodule below it."""
    for scope in FP16_BLOCKED_SCOPES:
        if node_name.startswith(scope) and "/" not in node_name[len(scope):]:
            return True
    return False
