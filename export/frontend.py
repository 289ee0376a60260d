"""wav2vec2's convolutional front end rewritten for onnxruntime: the features of ``AudioEncoder.conv_features``
with far fewer passes over memory.

The first layer's masked GroupNorm is folded into its convolution (exact up to float rounding;
tests/test_export_frontend.py). That convolution has one input channel, so it is a product of the (B, L, k)
waveform frames with a (k, C) weight, and each channel's mean and variance over the valid frames follow from the
frames' mean (B, k) and covariance (B, k, k). The normalisation becomes a per-utterance scale of the weight and a
shift: one batched MatMul and the activation instead of a dozen element-wise passes over the (B, C, L) output
(about 5% of the fp32 audio graph's time at base size). The later layers stay the model's own Conv layers.

Not done, by measurement (export/DESIGN.md): running the later convolutions as MatMuls so that the int8 variant
quantises them too. It made the int8 audio graph 1.3x faster still, but 8-bit activations in the front end moved
the demo model's top-1 decision on 11% of its held-out clips.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.model import AudioEncoder, conv_output_length, length_mask


class FrontEnd(nn.Module):
    """(B, N) normalised audio and (B,) sample lengths -> (B, J, C) features, time-major, as ``conv_features``."""

    def __init__(self, audio_encoder: AudioEncoder):
        super().__init__()
        layers = audio_encoder.wav2vec2.feature_extractor.conv_layers
        self.first = FirstConvLayer(layers[0], audio_encoder.config.feat_extract_norm)
        self.rest = layers[1:]

    def forward(self, input_values: Tensor, sample_lengths: Tensor) -> Tensor:
        hidden = self.first(input_values, sample_lengths)  # (B, C, L)
        for layer in self.rest:
            hidden = layer(hidden)
        return hidden.transpose(1, 2)


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

    def forward(self, waveform: Tensor, sample_lengths: Tensor) -> Tensor:
        """(B, N) waveform -> (B, C, L) channels-first, as the later Conv layers take it."""
        frames = strided_frames(waveform.unsqueeze(-1), self.kernel, self.stride)  # (B, L, k)
        if self.group_norm is None:
            hidden = frames @ self.weight
            if self.bias is not None:
                hidden = hidden + self.bias
            if self.layer_norm is not None:
                hidden = self.layer_norm(hidden)
            return self.activation(hidden).transpose(1, 2)
        weight, shift = self._normalised_weight(frames, sample_lengths)
        # The shift rides along as one more input column of ones, so the product needs no separate Add pass; the
        # (B, k + 1, L) side is the one transposed, so the large output comes out channels-first as it is.
        frames = torch.cat([frames, torch.ones_like(frames[..., :1])], dim=-1)  # (B, L, k + 1)
        weight = torch.cat([weight, shift.unsqueeze(1)], dim=1)  # (B, k + 1, C)
        return self.activation(weight.transpose(1, 2) @ frames.transpose(1, 2))  # (B, C, L)

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
