"""Length-bucketed batching: group waveforms of similar length under a budget of items and padded audio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class BatchBudget:
    """The most one graph run may take: ``max_items`` utterances and ``max_seconds`` of audio after padding.

    Padding counts because the encoder computes on it: a batch of a 10 s clip and three 1 s clips costs 40 s.
    A single clip longer than ``max_seconds`` still runs, alone. ``max_seconds=None`` bounds items only.
    """

    max_items: int = 16
    max_seconds: float | None = 80.0

    def __post_init__(self):
        if isinstance(self.max_items, bool) or not isinstance(self.max_items, int) or self.max_items < 1:
            raise ValueError(f"max_items must be a positive integer; got {self.max_items!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive or None; got {self.max_seconds!r}")

    def max_samples(self, sample_rate: int) -> int | None:
        return None if self.max_seconds is None else int(self.max_seconds * sample_rate)


def plan_batches(lengths: Sequence[int], budget: BatchBudget, sample_rate: int) -> list[list[int]]:
    """Split item indices into batches of similar length, longest first, each within ``budget``.

    Sorting by length keeps padding small; the caller puts results back in input order with the indices.
    """
    max_samples = budget.max_samples(sample_rate)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        # Longest first, so the first item of a batch sets its padded width.
        if current is None or not _fits(len(current) + 1, lengths[current[0]], budget.max_items, max_samples):
            batches.append([index])
        else:
            current.append(index)
    return batches


def _fits(items: int, width: int, max_items: int, max_samples: int | None) -> bool:
    return items <= max_items and (max_samples is None or items * width <= max_samples)
