"""The PyTorch reference route: the MMER model's inference path (encoders, CTC head, fusion) in eval and no_grad.

It computes what the Recognizer's three graphs compute, from the same preprocessing (mmer_rt's normalisation,
padding and tokenizer), so its time is the fair PyTorch figure and its probabilities the parity reference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from mmer_rt.audio import pad_batch
from training.model import MMER

from .workload import Workload


@dataclass
class ReferenceInputs:
    """A workload preprocessed as the runtime does it, as tensors on the reference's device."""

    input_values: torch.Tensor
    sample_mask: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class TorchReference:
    """One MMER model run by PyTorch with a chosen attention implementation, device and autocast dtype."""

    def __init__(self, model: MMER, attn_implementation: str = "sdpa", device: str = "cpu",
                 autocast_dtype: torch.dtype | None = None, compile_backend: str | None = None):
        model.set_attn_implementation(attn_implementation)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        # torch.compile's peer: the whole forward compiled once with dynamic shapes (speech has a new length in
        # almost every batch; static shapes would recompile for each).
        self._forward = self._eager_forward if compile_backend is None else \
            torch.compile(self._eager_forward, backend=compile_backend, dynamic=True)

    def prepare(self, workload: Workload, tokenizer) -> ReferenceInputs:
        values, sample_mask = pad_batch(list(workload.waveforms))
        text = tokenizer.encode_batch(list(workload.transcripts))
        tensors = (values, sample_mask, text.input_ids, text.attention_mask)
        return ReferenceInputs(*(torch.from_numpy(t).to(self.device) for t in tensors))

    @torch.no_grad()  # not inference_mode: under FlopCounterMode it breaks the weight-norm parametrisation
    def logits(self, inputs: ReferenceInputs) -> torch.Tensor:
        with self._autocast():
            logits = self._forward(inputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return logits

    def _eager_forward(self, inputs: ReferenceInputs) -> torch.Tensor:
        hidden_states, frame_mask = self.model.audio_encoder(inputs.input_values, inputs.sample_mask)
        # The runtime's audio graph computes the CTC head too (for transcripts); count its cost here as well.
        self.model.ctc_head(hidden_states)
        token_embeddings = self.model.text_encoder(inputs.input_ids, inputs.attention_mask)
        logits, _ = self.model.fusion(hidden_states, frame_mask, token_embeddings, inputs.attention_mask)
        return logits

    def probabilities(self, inputs: ReferenceInputs) -> np.ndarray:
        return torch.softmax(self.logits(inputs).float(), dim=-1).cpu().numpy()

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def build_model(config, seed: int) -> MMER:
    """An MMER of ``config`` with random weights drawn from ``seed`` (no pretrained encoders are loaded)."""
    torch.manual_seed(seed)
    return MMER.from_config(config, load_pretrained=False).eval()
