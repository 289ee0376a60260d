"""wav2vec2's positional convolution (grouped, 128 taps at base size) as grouped MatMuls over chunks of taps, for the
fp16 (CUDA) audio graph, where onnxruntime 1.31's Conv runs on cuDNN's fallback engines (export/DESIGN.md).

Output frame t of group g is sum_j x[t + j - k/2] W_g[j] (zero outside the utterance). Laying every tap's shifted
input side by side (an "unfold") turns that into one MatMul with K = k * C/G, but its frames take k times the input's
memory: 128 x at base size, 3.1 GB in fp16 for a batch of 32 x 10 s (500 frames x 768 channels). So the taps are
taken ``taps_per_chunk`` at a time: each chunk is one batched MatMul (B, G, T, m * C/G) @ (G, m * C/G, C/G) over
the groups, and the chunks' products are summed. Peak extra memory is m times the input (m = 16: 393 MB at
32 x 10 s, K = 768, the width cuBLAS already runs the transformer layers at); the arithmetic is exactly the
convolution's. Which m is fastest on a GPU is not measured yet: benchmarks/gpu_profile.py times the Conv against
chunks of 16 and of all taps on the next lease.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

DEFAULT_TAPS_PER_CHUNK = 16


class ChunkedGroupedConv(nn.Module):
    """Drop-in for transformers' ``Wav2Vec2PositionalConvEmbedding`` (weight norm already folded): (B, T, C) ->
    (B, T, C), the same values, computed as grouped MatMuls over chunks of taps."""

    def __init__(self, positional: nn.Module, taps_per_chunk: int = DEFAULT_TAPS_PER_CHUNK):
        super().__init__()
        conv = positional.conv
        if not isinstance(conv, nn.Conv1d) or conv.stride != (1,) or conv.dilation != (1,):
            raise ValueError("a chunked positional convolution needs a plain stride-1 Conv1d (weight norm folded)")
        if taps_per_chunk < 1:
            raise ValueError(f"taps_per_chunk must be positive; got {taps_per_chunk}")
        self.kernel = conv.kernel_size[0]
        self.groups = conv.groups
        self.width = conv.in_channels // conv.groups  # channels per group, in and out
        # transformers pads k // 2 on both sides and, for an even kernel, drops the last output frame: the same as
        # padding k // 2 before and k - 1 - k // 2 after.
        self.pad_before = conv.padding[0]
        self.pad_after = self.kernel - 1 - self.pad_before
        self.chunks = [(start, min(start + taps_per_chunk, self.kernel))
                       for start in range(0, self.kernel, taps_per_chunk)]
        weight = conv.weight.detach()  # (C, C/G, k): output channel g * w + o reads input channels of group g
        grouped = weight.reshape(self.groups, self.width, self.width, self.kernel)  # (G, out, in, k)
        for index, (start, stop) in enumerate(self.chunks):
            # (G, taps * in, out), rows in the order the shifted inputs are laid side by side: tap-major.
            chunk = grouped[..., start:stop].permute(0, 3, 2, 1).reshape(self.groups, -1, self.width)
            self.register_buffer(f"weight_{index}", chunk.contiguous())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.activation = positional.activation

    def forward(self, hidden: Tensor) -> Tensor:
        batch, frames, channels = hidden.shape
        # (B, G, T + k - 1, C/G): groups apart once, so that each chunk's shifted inputs are plain slices.
        padded = functional.pad(hidden, (0, 0, self.pad_before, self.pad_after))
        padded = padded.reshape(batch, -1, self.groups, self.width).transpose(1, 2)
        total = None
        for index, (start, stop) in enumerate(self.chunks):
            frames_side_by_side = torch.cat([padded[:, :, tap: tap + frames] for tap in range(start, stop)], dim=-1)
            product = frames_side_by_side @ getattr(self, f"weight_{index}")  # (B, G, T, C/G)
            total = product if total is None else total + product
        out = total.transpose(1, 2).reshape(batch, frames, channels)
        if self.bias is not None:
            out = out + self.bias
        return self.activation(out)
