"""Emotion-recognition metrics named the usual way: WA = overall accuracy, UA = mean per-class recall."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Scores:
    wa: float  # weighted accuracy: correct / all
    ua: float  # unweighted accuracy: mean over classes of recall (classes absent from y_true are skipped)
    confusion: np.ndarray  # rows = true class, columns = predicted class
    labels: list[str]

    def to_dict(self) -> dict:
        return {"wa": self.wa, "ua": self.ua, "confusion": self.confusion.tolist(), "labels": self.labels}

    def table(self) -> str:
        """The confusion matrix as aligned text, true classes down, predictions across."""
        width = max(6, *(len(label) for label in self.labels))
        lines = ["true \\ pred".ljust(width) + " " + " ".join(label[:width].rjust(width) for label in self.labels)]
        for label, row in zip(self.labels, self.confusion):
            lines.append(label.ljust(width) + " " + " ".join(str(int(n)).rjust(width) for n in row))
        return "\n".join(lines)


def score(y_true, y_pred, labels: list[str]) -> Scores:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(f"need two equal-length non-empty label vectors, got {y_true.shape} and {y_pred.shape}")
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    support = confusion.sum(axis=1)
    present = support > 0
    recalls = np.diag(confusion)[present] / support[present]
    return Scores(
        wa=float(np.trace(confusion) / confusion.sum()),
        ua=float(recalls.mean()),
        confusion=confusion,
        labels=list(labels),
    )
