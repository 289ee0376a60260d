"""wav2vec2's convolutional front end rewritten for onnxruntime: the features of ``AudioEncoder.conv_features``
with far fewer passes over memory, in one of two layouts.

The first layer's masked GroupNorm is folded into its convolution (exact up to float rounding;
tests/test_export_frontend.py). That convolution has one input channel, so it is a product of the (B, L, k)
waveform frames with a (k, C) weight, and each channel's mean and variance over the valid frames follow from the
frames' mean (B, k) and covariance (B, k, k). The normalisation becomes a per-utterance scale of the weight and a
shift: one batched MatMul and the activation instead of a dozen element-wise passes over the (B, C, L) output
(about 5% of the fp32 audio graph's time at base size).

The later layers, by layout:

- ``"channels"`` (the CPU graphs, fp32 and int8): the model's own Conv layers, channels first. onnxruntime's CPU
  Conv runs them at about its sgemm peak, and the int8 graph keeps them fp32: as int8 MatMuls they ran 1.3x
  faster, but 8-bit activations in the front end moved the demo model's top-1 decision on 11% of its held-out
  clips (export/DESIGN.md).
- ``"time"`` (the fp16 graph, for CUDA): each layer a MatMul over its input frames laid side by side, time-major,
  so that cuBLAS runs them. onnxruntime 1.31's CUDA Conv builds them through the cuDNN frontend, and under
  ``cudnn_conv_algo_search=DEFAULT`` with cuDNN's fallback engines ("running in Fallback mode. May be extremely
  slow."); on an H100 the audio graph then ran at about 5% of the fp16 matrix rate (README). The positional
  convolution (grouped, 128 taps) is rewritten apart, as grouped MatMuls over chunks of taps (export/positional.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.model import AudioEncoder, conv_output_length, length_mask


LAYOUTS = ("channels", "time")


class FrontEnd(nn.Module):
    """(B, N) normalised audio and (B,) sample lengths -> (B, J, C) features, time-major, as ``conv_features``;
    ``layout`` is "channels" (later layers as Conv) or "time" (as MatMul): see the module's docstring."""

    def __init__(self, audio_encoder: AudioEncoder, layout: str = "channels"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"front-end layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        self.layout = layout
        layers = audio_encoder.wav2vec2.feature_extractor.conv_layers
        self.first = FirstConvLayer(layers[0], audio_encoder.config.feat_extract_norm)
        if layout == "time":
            self.rest = nn.ModuleList(TimeMajorConvLayer(layer) for layer in layers[1:])
        else:
            self.rest = layers[1:]

    def forward(self, input_values: Tensor, sample_lengths: Tensor) -> Tensor:
        channels_first = self.layout == "channels"
        hidden = self.first(input_values, sample_lengths, channels_first)  # (B, C, L) or (B, L, C)
        for layer in self.rest:
            hidden = layer(hidden)
        return hidden.transpose(1, 2) if channels_first else hidden


class FirstConvLayer(nn.Module):
    """Layer 0 (one input channel): waveform frames times the kernel, then its GroupNorm (folded, masked),
    LayerNorm or no norm, then the activation."""

    def __init__(self, layer: nn.Module, feat_extract_norm: str):
        super().__init__()
        conv = layer.conv
        self.kernel, self.stride = conv.kernel_size[0], conv.stride[0]
        self.register_buffer("weight", conv.weight.detach()[:, 0, :].t().contiguous())  # (k, C)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        norm = getattr(layer, "layer_norm", None)
        self.group_norm = norm if feat_extract_norm == "group" else None
        self.layer_norm = norm if feat_extract_norm == "layer" else None
        self.activation = layer.activation

    def forward(self, waveform: Tensor, sample_lengths: Tensor, channels_first: bool = True) -> Tensor:
        """(B, N) waveform -> (B, C, L) channels-first, as later Conv layers take it, or (B, L, C) time-major."""
        frames = strided_frames(waveform.unsqueeze(-1), self.kernel, self.stride)  # (B, L, k)
        if self.group_norm is None:
            hidden = frames @ self.weight
            if self.bias is not None:
                hidden = hidden + self.bias
            if self.layer_norm is not None:
                hidden = self.layer_norm(hidden)
            hidden = self.activation(hidden)
            return hidden.transpose(1, 2) if channels_first else hidden
        weight, shift = self._normalised_weight(frames, sample_lengths)
        # The shift rides along as one more input column of ones, so the product needs no separate Add pass.
        frames = torch.cat([frames, torch.ones_like(frames[..., :1])], dim=-1)  # (B, L, k + 1)
        weight = torch.cat([weight, shift.unsqueeze(1)], dim=1)  # (B, k + 1, C)
        if channels_first:
            # The (B, k + 1, L) side is the one transposed, so the large output comes out channels-first as it is.
            return self.activation(weight.transpose(1, 2) @ frames.transpose(1, 2))  # (B, C, L)
        return self.activation(frames @ weight)  # (B, L, C)

    def _normalised_weight(self, frames: Tensor, sample_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Per utterance, the kernel scaled by GroupNorm's 1/std and the shift, from valid-frame statistics.

        Channel c's output is frames @ w_c (+ b_c); over the valid frames its mean is mu . w_c (+ b_c) and its
        variance w_c' Sigma w_c, with mu and Sigma the frames' mean and covariance: statistics of the (B, L, k)
        frames instead of the (B, L, C) output. Sigma is taken from centred frames (two passes over k columns,
        cheap), so a DC offset costs no precision to cancellation.
        """
        valid = length_mask(conv_output_length(sample_lengths, self.kernel, self.stride), frames.shape[1])
        valid = valid.to(frames.dtype).unsqueeze(-1)  # (B, L, 1)
        count = valid.sum(1).clamp(min=1.0)  # (B, 1); clamp: a row shorter than the kernel must not divide by 0
        mean = (frames * valid).sum(1) / count  # (B, k)
        centred = (frames - mean.unsqueeze(1)) * valid
        covariance = centred.transpose(1, 2) @ centred / count.unsqueeze(-1)  # (B, k, k)
        variance = ((covariance @ self.weight) * self.weight).sum(1).clamp(min=0.0)  # (B, C)
        scale = self.group_norm.weight / torch.sqrt(variance + self.group_norm.eps)  # (B, C)
        shift = self.group_norm.bias - (mean @ self.weight) * scale  # the conv bias cancels against its mean
        return self.weight.unsqueeze(0) * scale.unsqueeze(1), shift


class TimeMajorConvLayer(nn.Module):
    """A later conv layer as a MatMul: (B, T, Cin) -> frames (B, L, k * Cin) -> (B, L, Cout), norm, activation."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        conv = layer.conv
        if conv.groups != 1 or conv.padding != (0,) or conv.dilation != (1,):
            raise ValueError("a time-major conv layer needs an ungrouped, unpadded, undilated convolution")
        self.kernel, self.stride = conv.kernel_size[0], conv.stride[0]
        # (Cout, Cin, k) -> (k * Cin, Cout), rows in the order strided_frames lays the taps side by side.
        weight = conv.weight.detach().permute(2, 1, 0).reshape(self.kernel * conv.in_channels, conv.out_channels)
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.layer_norm = getattr(layer, "layer_norm", None)  # LayerNormConvLayer's, over channels
        if self.layer_norm is not None and not isinstance(self.layer_norm, nn.LayerNorm):
            raise ValueError("a time-major conv layer takes a LayerNorm over channels or no norm")
        self.activation = layer.activation

    def forward(self, hidden: Tensor) -> Tensor:
        hidden = strided_frames(hidden, self.kernel, self.stride) @ self.weight
        if self.bias is not None:
            hidden = hidden + self.bias
        if self.layer_norm is not None:
            hidden = self.layer_norm(hidden)
        return self.activation(hidden)


def strided_frames(hidden: Tensor, kernel: int, stride: int) -> Tensor:
    """(B, T, C) -> (B, L, kernel * C): row t holds positions t*stride ... t*stride + kernel - 1, side by side."""
    batch, length, channels = hidden.shape
    frames = (length - kernel) // stride + 1
    if kernel % stride == 0:
        # Windows made of whole stride-long blocks (wav2vec2's first layer: 10 = 2 x 5): one reshape into blocks,
        # then kernel / stride shifted views side by side, instead of one strided slice per position.
        blocks = kernel // stride
        grouped = hidden[:, : stride * (frames + blocks - 1)].reshape(batch, frames + blocks - 1, stride * channels)
        if blocks == 1:
            return grouped
        return torch.cat([grouped[:, block: block + frames] for block in range(blocks)], dim=-1)
    end = stride * (frames - 1) + 1
    return torch.cat([hidden[:, tap: tap + end: stride] for tap in range(kernel)], dim=-1)
