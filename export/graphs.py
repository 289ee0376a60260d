"""The three exported graphs as torch modules with plain tensor inputs and outputs, and their tracing to ONNX.

Each wrapper's forward takes and returns exactly the tensors named in mmer_rt.modeldir's graph contract, so the
ONNX input and output names come from there and nowhere else.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mmer_rt.audio import NORM_EPS
from mmer_rt.modeldir import (
    AUDIO_INPUTS, AUDIO_INPUTS_V1, AUDIO_OUTPUTS, FORMAT_VERSION, FUSION_INPUTS, FUSION_OUTPUTS, TEXT_INPUTS, TEXT_OUTPUTS,
)
from training.model import MMER

from .frontend import FrontEnd
from .positional import DEFAULT_TAPS_PER_CHUNK, ChunkedGroupedConv

POSITIONAL_FORMS = ("conv", "matmul")

# The legacy TorchScript exporter, chosen by measurement (export/DESIGN.md): onnxruntime's transformer optimizer
# fuses Attention only on its graphs; on dynamo graphs it fused none.
OPSET = 17


class AudioGraph(nn.Module):
    """Audio encoder plus CTC head: (waveforms, sample_lengths) -> (hidden_states, frame_mask, ctc_logits), the
    waveforms normalised per utterance inside (model-directory format version 2); with ``format_version=1``,
    (input_values normalised by the caller, sample_mask) as version 1 directories hold it.

    The convolutional front end runs as export/frontend.py rewrites it (the first layer's GroupNorm folded), its
    later layers in ``layout``: "channels" (Conv, the CPU graphs) or "time" (MatMul, the fp16 graph for CUDA).
    The positional convolution is ``positional``: "conv" (the model's own) or "matmul" (grouped MatMuls over chunks
    of ``taps_per_chunk`` taps, export/positional.py: the fp16 graph, which then holds no Conv at all).
    """

    def __init__(self, model: MMER, layout: str = "channels", positional: str = "conv",
                 taps_per_chunk: int = DEFAULT_TAPS_PER_CHUNK, format_version: int = FORMAT_VERSION):
        super().__init__()
        self.normalize = WaveformNorm() if format_version >= 2 else None
        if positional not in POSITIONAL_FORMS:
            raise ValueError(f"positional form {positional!r} is not one of {', '.join(POSITIONAL_FORMS)}")
        self.front_end = FrontEnd(model.audio_encoder, layout)
        self.audio_encoder = model.audio_encoder
        self.ctc_head = model.ctc_head  # applied without its training-time dropout
        encoder = model.audio_encoder.wav2vec2.encoder
        self.positional = (ChunkedGroupedConv(encoder.pos_conv_embed, taps_per_chunk)
                           if positional == "matmul" else None)

    def forward(self, audio: Tensor, lengths_or_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.normalize is None:  # version 1: normalised audio and a sample mask
            input_values, sample_lengths = audio, lengths_or_mask.long().sum(-1)
        else:
            sample_lengths = lengths_or_mask.long()
            input_values = self.normalize(audio, sample_lengths)
        features = self.front_end(input_values, sample_lengths)
        with self._positional_swapped():
            hidden_states, frame_mask = self.audio_encoder.encode_features(features, sample_lengths)
        return hidden_states, frame_mask, self.ctc_head(hidden_states)

    @contextlib.contextmanager
    def _positional_swapped(self):
        """The encoder's positional convolution replaced for this call only: the model is shared with the other
        graphs' wrappers and with the CPU trace, which keep the Conv."""
        if self.positional is None:
            yield
            return
        encoder = self.audio_encoder.wav2vec2.encoder
        own = encoder.pos_conv_embed
        encoder.pos_conv_embed = self.positional
        try:
            yield
        finally:
            encoder.pos_conv_embed = own


class WaveformNorm(nn.Module):
    """(B, N) zero-padded waveforms and (B,) lengths -> each utterance at zero mean and unit variance over its own
    samples, (x - mean) / sqrt(var + 1e-7) as mmer_rt.audio.normalize computes it, padding left at zero.

    Scaled by each row's peak first (see forward). In the graph so that the host only copies samples (on an H100, normalising on one core was a third of a
    5 s x 32 call's host work). Kept fp32 in the fp16 variant (export/precision.py: a sum of squares over 200,000
    samples is beyond fp16's range).
    """

    def forward(self, waveforms: Tensor, sample_lengths: Tensor) -> Tensor:
        valid = (torch.arange(waveforms.shape[1], device=waveforms.device)[None, :] < sample_lengths[:, None])
        valid = valid.to(waveforms.dtype)
        # Scaled by each row's peak first: the result is the same ((x - m) / sqrt(v + eps) is scale-free but for
        # eps, which scales along), and a sum of squares of loud audio (amplitudes from about 1e17) cannot overflow
        # float32 and pass for silence (mmer_rt.audio.normalize redoes such audio in float64).
        peak = (waveforms.abs() * valid).amax(-1, keepdim=True).clamp(min=1e-20)
        scaled = waveforms / peak
        count = sample_lengths.to(waveforms.dtype).clamp(min=1.0).unsqueeze(-1)
        mean = (scaled * valid).sum(-1, keepdim=True) / count
        centred = (scaled - mean) * valid
        variance = (centred * centred).sum(-1, keepdim=True) / count
        return centred / torch.sqrt(variance + NORM_EPS / (peak * peak))


class TextGraph(nn.Module):
    """Text encoder: (input_ids, attention_mask) -> token_embeddings."""

    def __init__(self, model: MMER):
        super().__init__()
        self.text_encoder = model.text_encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text_encoder(input_ids, attention_mask)


class FusionGraph(nn.Module):
    """Fusion block: (hidden_states, frame_mask, token_embeddings, attention_mask) -> logits."""

    def __init__(self, model: MMER):
        super().__init__()
        self.fusion = model.fusion

    def forward(self, hidden_states: Tensor, frame_mask: Tensor, token_embeddings: Tensor,
                attention_mask: Tensor) -> Tensor:
        logits, _ = self.fusion(hidden_states, frame_mask, token_embeddings, attention_mask)
        return logits


@dataclass(frozen=True)
class GraphSpec:
    """How one graph is traced: its wrapper class, its I/O names and which axes of each are dynamic."""

    name: str
    wrapper: type[nn.Module]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]


_AUDIO_OUTPUT_AXES = {"hidden_states": {0: "batch", 1: "frames"}, "frame_mask": {0: "batch", 1: "frames"},
                      "ctc_logits": {0: "batch", 1: "frames"}}
GRAPH_SPECS = (
    GraphSpec("audio_encoder", AudioGraph, AUDIO_INPUTS, AUDIO_OUTPUTS, {
        "waveforms": {0: "batch", 1: "samples"}, "sample_lengths": {0: "batch"}, **_AUDIO_OUTPUT_AXES,
    }),
    GraphSpec("text_encoder", TextGraph, TEXT_INPUTS, TEXT_OUTPUTS, {
        "input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
        "token_embeddings": {0: "batch", 1: "tokens"},
    }),
    GraphSpec("fusion", FusionGraph, FUSION_INPUTS, FUSION_OUTPUTS, {
        "hidden_states": {0: "batch", 1: "frames"}, "frame_mask": {0: "batch", 1: "frames"},
        "token_embeddings": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
        "logits": {0: "batch"},
    }),
)


# The audio graph as model-directory format version 1 held it (normalised input, sample mask): still traced on
# request (export_model_dir's format_version), so that the reader's version-1 path stays tested.
AUDIO_SPEC_V1 = GraphSpec("audio_encoder", AudioGraph, AUDIO_INPUTS_V1, AUDIO_OUTPUTS, {
    "input_values": {0: "batch", 1: "samples"}, "sample_mask": {0: "batch", 1: "samples"}, **_AUDIO_OUTPUT_AXES,
})


def exportable_copy(model: MMER) -> MMER:
    """A copy ready for tracing: eval mode, eager attention, weight-norm parametrisations folded into weights.

    Eager attention traces to the MatMul/Softmax pattern that onnxruntime's Attention fusion recognises; the
    folded positional-convolution weight becomes a plain initializer instead of a norm computed on every run.
    The copy is rebuilt from the config, not ``copy.deepcopy``-ed: a deep copy shares the class torch injects
    into a parametrised module, and removing the parametrisation from the copy deletes that class's ``weight``
    property, breaking the caller's model (seen with torch 2.13).
    """
    export_model = MMER.from_config(model.config, load_pretrained=False)
    export_model.load_state_dict(model.state_dict())
    export_model.eval().set_attn_implementation("eager")
    for module in list(export_model.modules()):
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return export_model


def export_graph(model: MMER, spec: GraphSpec, example_inputs: tuple[Tensor, ...], path: Path,
                 **wrapper_options) -> Path:
    """Trace ``spec``'s wrapper (built with ``wrapper_options``) around an exportable copy of ``model`` to the ONNX
    file ``path``."""
    wrapper = spec.wrapper(model, **wrapper_options).eval()
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns that it is deprecated and about traced shape arithmetic; neither applies to
        # these graphs, whose dynamic axes are verified by the batch-invariance tests.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, example_inputs, str(path), input_names=list(spec.inputs), output_names=list(spec.outputs),
            dynamic_axes=spec.dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    return path


def example_inputs(model: MMER) -> dict[str, tuple[Tensor, ...]]:
    """Small padded inputs for tracing each graph (two rows of different lengths, so no axis traces as constant)."""
    frames_per_row = (6, 4)
    samples = [samples_for_frames(model, frames) for frames in frames_per_row]
    sample_mask = torch.zeros(2, max(samples), dtype=torch.long)
    for row, count in enumerate(samples):
        sample_mask[row, :count] = 1
    input_values = torch.randn(sample_mask.shape, generator=torch.Generator().manual_seed(0)) * sample_mask
    waveforms = 0.1 * input_values + 0.01 * sample_mask  # not normalised, and off zero: the graph normalises
    input_ids = torch.tensor([[0, 5, 6, 7, 2], [0, 5, 2, 1, 1]])
    pad_id = model.config.text.get("pad_token_id", 1)
    input_ids[1, 3:] = pad_id
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        hidden_states, frame_mask, _ = AudioGraph(model, format_version=1)(input_values, sample_mask)
        token_embeddings = TextGraph(model)(input_ids, attention_mask)
    return {
        "audio_encoder": (waveforms, sample_mask.sum(-1)),
        "audio_encoder_v1": (input_values, sample_mask),
        "text_encoder": (input_ids, attention_mask),
        "fusion": (hidden_states, frame_mask, token_embeddings, attention_mask),
    }


def samples_for_frames(model: MMER, frames: int) -> int:
    """The fewest samples that give the audio encoder ``frames`` output frames."""
    samples = frames
    for kernel, stride in reversed(list(zip(model.config.audio["conv_kernel"], model.config.audio["conv_stride"]))):
        samples = (samples - 1) * stride + kernel
    return samples
