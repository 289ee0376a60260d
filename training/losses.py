"""MMER's training objective: CE + lambda * (CTC + SCL + ACL), each term as docs/mmer-model.md defines it.

The loss settings (lambda, the temperature tau, which SCL form) are arguments here, not model config: they
change how a model is trained, not what a checkpoint computes.

Under DistributedDataParallel each rank holds an equal part of the global batch. Given ``ranks`` (a
``training.distributed.Distributed``), every term here is that rank's *share* of the global batch's loss: summed
over the ranks, the shares give exactly the loss one process computes on the whole global batch. Means divide by
the global batch's counts, not the rank's; SCL and ACL compare each of this rank's utterances with the embeddings
of every rank, gathered with their gradients. DDP averages gradients over ranks, so the trainer multiplies the
share by the world size before ``backward``; the averaged gradient is then the gradient of the global batch's loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmer_rt.text import CTC_BLANK

if TYPE_CHECKING:
    from .distributed import Distributed

TAU = 0.07
LAMBDA = 0.1
SCL_FORMS = ("published", "supcon")

CtcTargets = Sequence[Sequence[int]] | tuple[Tensor, Tensor]


def ctc_loss(
    ctc_logits: Tensor, frame_mask: Tensor, targets: CtcTargets, reduction: str = "sum", zero_infinity: bool = False
) -> Tensor:
    """CTC of the ASR head (blank 0), summed over the batch as in the published code.

    Args:
      ctc_logits: (B, J, V) unnormalised scores; computed in float32 whatever their dtype.
      frame_mask: (B, J) valid audio frames; each row's count is its input length.
      targets: per-utterance label-id lists (``mmer_rt.text.ctc_targets``), or a (padded (B, S), lengths (B,))
        pair of tensors.
      reduction: "sum", "mean" (torch's: each loss divided by its target length, then averaged) or "none".
      zero_infinity: passed to torch; a target too long for its frames otherwise gives an infinite loss.
    """
    padded, lengths = _pad_targets(targets, ctc_logits.device)
    if padded.shape[0] != ctc_logits.shape[0]:
        raise ValueError(f"ctc_loss: {padded.shape[0]} target sequences for a batch of {ctc_logits.shape[0]}")
    log_probs = F.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)
    input_lengths = frame_mask.long().sum(-1)
    return F.ctc_loss(log_probs, padded, input_lengths, lengths, blank=CTC_BLANK, reduction=reduction,
                      zero_infinity=zero_infinity)


def _pad_targets(targets: CtcTargets, device) -> tuple[Tensor, Tensor]:
    if isinstance(targets, tuple) and len(targets) == 2 and all(isinstance(t, Tensor) for t in targets):
        return targets[0].to(device).long(), targets[1].to(device).long()
    lengths = torch.tensor([len(t) for t in targets], dtype=torch.long, device=device)
    width = max([len(t) for t in targets] + [1])
    padded = torch.zeros((len(targets), width), dtype=torch.long, device=device)
    for row, sequence in enumerate(targets):
        padded[row, : len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
    return padded, lengths


def scl_loss_published(embeddings: Tensor, labels: Tensor, tau: float = TAU, ranks: Distributed | None = None) -> Tensor:
    """The supervised contrastive loss as the published code computes it (it produced the paper's numbers).

    S = e e^T without normalisation; a row-wise log-softmax, then divided by tau; the mean of -log p over every
    pair with the same label, self-pairs included. With ``ranks``, this rank's rows against the global batch's
    columns, divided by the global batch's number of same-label pairs (the sum of each class's count squared).
    """
    keys, key_labels = _global(embeddings, ranks), _global(labels, ranks)
    log_p = F.log_softmax(embeddings @ keys.T, dim=-1) / tau
    same = _same_label(labels, key_labels).to(log_p.dtype)
    pairs = (torch.bincount(key_labels).to(log_p.dtype) ** 2).sum()
    return -(log_p * same).sum() / pairs


def supcon_loss(embeddings: Tensor, labels: Tensor, tau: float = TAU, ranks: Distributed | None = None) -> Tensor:
    """Khosla et al.'s SupCon ("L_out"): L2-normalised embeddings, self-pairs excluded from both the
    positives and the denominator, -log p averaged over each anchor's positives, then over anchors.

    Anchors whose label occurs only once have no positives and do not count; a batch with no positive pair at
    all has nothing to learn from and gives 0 (still attached to the graph). With ``ranks``, this rank's anchors
    against the global batch, averaged over the global batch's anchors that have a positive.
    """
    e = F.normalize(embeddings, dim=-1)
    keys, key_labels = _global(e, ranks), _global(labels, ranks)
    offset = ranks.rank * len(e) if ranks is not None else 0
    self_pair = torch.zeros((len(e), len(keys)), dtype=torch.bool, device=e.device)
    self_pair[torch.arange(len(e)), torch.arange(len(e)) + offset] = True
    scores = (e @ keys.T / tau).masked_fill(self_pair, float("-inf"))
    log_p = F.log_softmax(scores, dim=-1).masked_fill(self_pair, 0.0)
    positives = (_same_label(labels, key_labels) & ~self_pair).to(log_p.dtype)
    per_anchor = positives.sum(-1)
    has_positive = per_anchor > 0
    counts = torch.bincount(key_labels)
    anchors = counts[counts > 1].sum()  # the global batch's anchors with at least one positive
    if not bool(anchors > 0):
        return embeddings.sum() * 0.0
    anchor_loss = -(log_p * positives).sum(-1)[has_positive] / per_anchor[has_positive]
    return anchor_loss.sum() / anchors.to(log_p.dtype)


def acl_loss(embeddings: Tensor, aug_embeddings: Tensor, tau: float = TAU, ranks: Distributed | None = None) -> Tensor:
    """InfoNCE with in-batch negatives: cross-entropy of (e e_aug^T / tau) against the diagonal.

    With ``ranks``, the negatives are the augmented embeddings of the whole global batch, and the mean is over it.
    """
    if embeddings.shape != aug_embeddings.shape:
        raise ValueError(
            f"acl_loss: original embeddings {tuple(embeddings.shape)} and augmented {tuple(aug_embeddings.shape)} "
            "must have the same shape (one augmented copy per utterance)"
        )
    keys = _global(aug_embeddings, ranks)
    offset = ranks.rank * len(embeddings) if ranks is not None else 0
    scores = embeddings @ keys.T / tau
    targets = torch.arange(len(scores), device=scores.device) + offset
    return F.cross_entropy(scores, targets, reduction="sum") / len(keys)


def mmer_loss(out, aug_out, labels: Tensor, ctc_targets: CtcTargets, lam: float = LAMBDA, scl: str = "published",
              tau: float = TAU, ctc_reduction: str = "sum",
              ranks: Distributed | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """CE + lam * (CTC + SCL + ACL) for one batch (with ``ranks``: this rank's share of the global batch's loss).

    Args:
      out: the MMEROutput of the original utterances; CE, CTC and SCL are computed on it only.
      aug_out: the MMEROutput of their augmented versions, or None to leave ACL out.
      labels: (B,) class indices.
      ctc_targets: as ``ctc_loss`` takes them.
      ctc_reduction: "sum" over the batch as published, or "mean" (per target character, then over the batch),
        which keeps CTC from outweighing CE when the audio encoder starts from random weights. A target longer
        than its frames contributes zero rather than an infinite loss.
      scl: "published" (``scl_loss_published``) or "supcon" (``supcon_loss``).
      ranks: the DDP world this batch is one equal part of (see the module's docstring), or None.

    Returns:
      The total loss and its detached parts {"ce", "ctc", "scl", "acl" (when aug_out is given), "total"}.
    """
    if scl not in SCL_FORMS:
        raise ValueError(f"mmer_loss: scl={scl!r}; use one of {SCL_FORMS}")
    if ctc_reduction not in ("sum", "mean"):
        raise ValueError(f"mmer_loss: ctc_reduction={ctc_reduction!r}; use 'sum' or 'mean'")
    contrastive = scl_loss_published if scl == "published" else supcon_loss
    global_size = len(labels) * (ranks.world_size if ranks is not None else 1)
    per_utterance_ctc = ctc_loss(out.ctc_logits, out.frame_mask, ctc_targets, reduction="none", zero_infinity=True)
    if ctc_reduction == "mean":  # torch's "mean": each loss over its target length, then the batch mean
        _, target_lengths = _pad_targets(ctc_targets, per_utterance_ctc.device)
        per_utterance_ctc = per_utterance_ctc / target_lengths.clamp(min=1)
    parts = {
        "ce": F.cross_entropy(out.logits.float(), labels, reduction="sum") / global_size,
        "ctc": per_utterance_ctc.sum() / (global_size if ctc_reduction == "mean" else 1),
        "scl": contrastive(out.scl_embeddings.float(), labels, tau, ranks),
    }
    if aug_out is not None:
        parts["acl"] = acl_loss(out.scl_embeddings.float(), aug_out.acl_embeddings.float(), tau, ranks)
    auxiliary = sum(value for name, value in parts.items() if name != "ce")
    total = parts["ce"] + lam * auxiliary
    return total, {**{name: value.detach() for name, value in parts.items()}, "total": total.detach()}


def _global(tensor: Tensor, ranks: Distributed | None) -> Tensor:
    return tensor if ranks is None else ranks.gather(tensor)


def _same_label(labels: Tensor, key_labels: Tensor | None = None) -> Tensor:
    """(B, K) True where row i's label equals column j's (the batch against itself, or against ``key_labels``)."""
    key_labels = labels if key_labels is None else key_labels
    return labels.unsqueeze(1) == key_labels.unsqueeze(0)
