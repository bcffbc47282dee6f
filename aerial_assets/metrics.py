"""Classification metrics from a confusion matrix. Pure numpy.

Rows of the confusion matrix are the true classes, columns the predicted ones. Recall is
TP / (TP + FN) -- the row sum -- and precision TP / (TP + FP) -- the column sum (the original
sample's notebook swapped them). A class with no support or no prediction scores 0 for the
undefined ratio, and macro averages run over the classes present in the split (support > 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def confusion_matrix(pairs: Iterable[tuple[int, int, int]], n_classes: int) -> np.ndarray:
    """Build the matrix from ``(true index, predicted index, count)`` triples (a Spark groupBy result)."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    for true, pred, count in pairs:
        matrix[int(true), int(pred)] += int(count)
    return matrix


@dataclass
class ClassificationReport:
    """Every number the comparison needs, for one model on one split."""

    classes: list[str]
    matrix: np.ndarray
    accuracy: float
    macro_f1: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    @property
    def n(self) -> int:
        return int(self.matrix.sum())

    def per_class_markdown(self) -> str:
        lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        for i, name in enumerate(self.classes):
            lines.append(
                f"| {name} | {self.precision[i]:.3f} | {self.recall[i]:.3f} | {self.f1[i]:.3f} | {int(self.support[i])} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "classes": self.classes,
            "confusion_matrix": self.matrix.tolist(),
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "precision": self.precision.tolist(),
            "recall": self.recall.tolist(),
            "f1": self.f1.tolist(),
            "support": self.support.tolist(),
        }


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def report(matrix: np.ndarray, classes: Sequence[str]) -> ClassificationReport:
    """Accuracy, macro-F1 and per-class precision/recall/F1 from a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)  # TP + FN
    predicted = matrix.sum(axis=0).astype(np.float64)  # TP + FP
    recall = _safe_ratio(tp, support)
    precision = _safe_ratio(tp, predicted)
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    total = matrix.sum()
    accuracy = float(tp.sum() / total) if total else 0.0
    present = support > 0
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    return ClassificationReport(
        classes=list(classes),
        matrix=matrix,
        accuracy=accuracy,
        macro_f1=macro_f1,
        precision=precision,
        recall=recall,
        f1=f1,
        support=support.astype(np.int64),
    )
