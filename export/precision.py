"""Precision variants of an fp32 graph: fp16 for GPUs, dynamically quantised int8 for CPUs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import onnx

from .optimize import quiet_loggers

# Kept in fp32 in the fp16 variant, by operator type: normalisations whose variance sum overflows or loses
# precision in fp16 (fairseq keeps wav2vec2's front-end GroupNorm in fp32 for this reason), as measured in
# export/DESIGN.md. Added to onnxruntime's default block list.
FP16_BLOCKED_OPS = ("GroupNormalization", "InstanceNormalization")
# Node-name scopes kept whole in fp32, in both the fp16 and the int8 variant: the waveform normalisation (format
# version 2, export/graphs.py: a sum of squares over up to 200,000 samples) and the front end's first layer
# (export/frontend.py). It reads the raw waveform, and its folded GroupNorm sums the frames' second moments over
# up to 42,000 frames (beyond fp16's range); a product with 10 or 11 inputs per output gains nothing from int8.
WAVEFORM_SCOPES = ("/normalize/", "/front_end/first/")
# The operators the int8 variant quantises: every MatMul and the fused Attention's input projection (QAttention).
# Not Conv: ConvInteger was slower than the fp32 Conv, and 8-bit activations in the convolutional front end moved
# the demo model's top-1 decision on 11% of its held-out clips (export/DESIGN.md).
INT8_OPS = ("MatMul", "Attention")
# The graphs the int8 variant quantises; the others are the fp32 graphs, unchanged. Chosen per graph by measured error
# and time (export/DESIGN.md, "int8, graph by graph"; `python -m benchmarks.int8_graphs`): the audio graph is most of
# the time and little of the error; the text graph little of the time and most of the error (with a pretrained BERT
# text encoder, quantising it alone moved probabilities by 1.6e-2); the fusion graph is a few percent of the time.
INT8_GRAPHS = ("audio_encoder",)
# Inside the int8 variant, the text graph's word-embedding table (the one Gather indexed by input_ids) is stored in
# fp16 and its gathered rows cast to fp32: roberta-base's table is 50265 x 768, 154 MB in fp32, a third of the text
# graph, and a token's embedding is only read, never multiplied as a whole. fp16 keeps 11 bits of each entry (int8
# kept 8 and moved token embeddings by 0.75%); at base size the text session held 400 MB instead of 484 MB.
FP16_TABLE_INDICES = "input_ids"


def to_fp16(source: Path, target: Path) -> Path:
    """Convert ``source`` to fp16 with fp32 inputs and outputs, the blocked operators and scopes left in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(source)))
    # The symbolic shape inference warns that it cannot compare the front end's strided window bounds with the
    # sample count ("treat as equal"); those bounds are integers the converter never types as floats.
    # onnxruntime.transformers imports that module by its bare name, so it logs as "symbolic_shape_infer".
    with quiet_loggers("symbolic_shape_infer", "onnxruntime.tools.symbolic_shape_infer"):
        model.convert_float_to_float16(
            # Symbolic shape inference is required: onnx's own cannot type the fused com.microsoft operators.
            use_symbolic_shape_infer=True,
            keep_io_types=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_BLOCKED_OPS),
            node_block_list=_nodes_in_scopes(model.model, WAVEFORM_SCOPES),
        )
    model.save_model_to_file(str(target))
    return target


def to_int8(source: Path, target: Path, keep_fp32: Sequence[str] = ()) -> Path:
    """Quantise the MatMul and Attention weights of ``source`` to int8 (activations quantised per batch at run
    time), the waveform scopes and the nodes named in ``keep_fp32`` excepted.

    Only these operators: quantising Conv too (ConvInteger) made the audio encoder slower than PyTorch on AVX2
    CPUs, and the front end is where emotion's acoustic detail lives.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = _nodes_in_scopes(onnx.load(str(source), load_external_data=False), WAVEFORM_SCOPES) + list(keep_fp32)
    # The root logger: the quantizer advises pre-processing (shape inference) through the root logger on every graph;
    # DefaultTensorType below is what stands in for it on fused graphs.
    with quiet_loggers(""):
        quantize_dynamic(
            str(source), str(target), op_types_to_quantize=list(INT8_OPS), weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            # One scale per output channel, at no cost in speed (export/DESIGN.md): with it, and Attention
            # quantised too, max |delta probability| on the demo model's held-out clips was 0.017, against 0.026
            # for MatMul alone with one scale per tensor.
            per_channel=True,
            # The optimizer's fused com.microsoft operators carry no type information the quantizer can infer.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return target


def fp16_embedding_table(source: Path, target: Path, indices: str = FP16_TABLE_INDICES) -> list[str]:
    """Write ``source`` to ``target`` with each float32 table that a Gather indexes by the graph input ``indices``
    stored in fp16, a Cast to float32 after that Gather; returns the tables' names (none: ``target`` is a copy).

    A table that any other node also reads is left as it is.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    converted = []
    for node in list(model.graph.node):
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if (table is None or node.input[1] != indices or readers[table.name] != 1
                or table.data_type != TensorProto.FLOAT):
            continue
        table.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table).astype(np.float16), table.name))
        rows = node.output[0]
        node.output[0] = f"{rows}_fp16"
        cast = helper.make_node("Cast", [node.output[0]], [rows], to=TensorProto.FLOAT, name=f"{node.name}_to_fp32")
        model.graph.node.insert(list(model.graph.node).index(node) + 1, cast)
        converted.append(table.name)
    onnx.save(model, str(target))
    return converted


def _nodes_in_scopes(model: onnx.ModelProto, scopes: tuple[str, ...]) -> list[str]:
    """Names of the nodes whose name lies in one of ``scopes`` (a scope includes its submodules)."""
    return [node.name for node in model.graph.node if node.name.startswith(scopes)]


def int8_node_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """The int8 variant's candidate nodes of an (fp32, optimised) audio graph by where they sit, in graph order: the
    feature projection, each transformer layer's attention and its feed-forward block, the CTC head."""
    groups: dict[str, list[str]] = {}
    attention = 0
    for node in model.graph.node:
        if node.op_type not in INT8_OPS or node.name.startswith(WAVEFORM_SCOPES):
            continue
        layer = re.search(r"layers\.(\d+)/(attention|feed_forward)", node.name)
        if layer:
            group = f"layer {layer.group(1)} {layer.group(2).replace('_', '-')}"
        elif node.op_type == "Attention":
            # The fused Attention nodes carry no scope; they come in layer order.
            group, attention = f"layer {attention} attention", attention + 1
        else:
            group = node.name.strip("/").split("/")[0].replace("_", " ")
        groups.setdefault(group, []).append(node.name)
    return groups
