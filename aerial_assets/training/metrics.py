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


#: Equal-width confidence bins of the expected calibration error, as in Guo et al. 2017 ("On Calibration of
#: Modern Neural Networks"), so the number compares with published ones.
ECE_BINS = 15


@dataclass(frozen=True)
class CalibrationBin:
    """Tiles whose top probability fell in ``(lower, upper]``: how many, their mean top probability and the
    share of them predicted correctly. A well calibrated model has ``confidence`` close to ``accuracy``."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: float


@dataclass(frozen=True)
class Calibration:
    """Expected calibration error (ECE) and the bins it was computed from (a reliability diagram's data).

    County maps and change tables use the champion's probabilities (the map's confidence, the share of
    tiles above a threshold), so how far "0.9" is from 90 % right matters as much as accuracy."""

    ece: float
    max_gap: float
    n: int
    bins: list[CalibrationBin]

    def to_dict(self) -> dict[str, object]:
        return {"ece": self.ece, "max_gap": self.max_gap, "n": self.n, "n_bins": len(self.bins),
                "bins": [vars(b) for b in self.bins if b.count]}


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> Calibration:
    """ECE = sum over bins of (tiles in bin / all tiles) x |accuracy in bin - mean confidence in bin|, with the
    top-class probability as confidence; ``max_gap`` is the largest such gap of a non-empty bin (the maximum
    calibration error). Raises ``ValueError`` when the inputs disagree in length or hold a probability
    outside [0, 1]: a silently clipped probability would hide a broken model."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    if confidence.shape != correct.shape:
        raise ValueError(f"{len(confidence)} confidences but {len(correct)} outcomes")
    if confidence.size and (np.isnan(confidence).any() or confidence.min() < 0 or confidence.max() > 1):
        raise ValueError("confidences must be probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # (lower, upper]: a confidence of exactly 0 joins the first bin
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins, ece, max_gap = [], 0.0, 0.0
    for b in range(n_bins):
        member = index == b
        count = int(member.sum())
        conf = float(confidence[member].mean()) if count else 0.0
        acc = float(correct[member].mean()) if count else 0.0
        if count:
            gap = abs(acc - conf)
            ece += count / confidence.size * gap
            max_gap = max(max_gap, gap)
        bins.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), count, conf, acc))
    return Calibration(ece=float(ece), max_gap=float(max_gap), n=int(confidence.size), bins=bins)
