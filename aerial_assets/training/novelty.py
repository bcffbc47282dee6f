"""How far a tile's features lie from the training tiles': the out-of-distribution score. No Dagster import.

Why: a classifier answers for every tile, also for imagery unlike anything it was trained on (another sensor,
another resolution, tiles upsampled five times), and its probabilities do not say so. A model of where the
training features lie does: the score of a tile is its Mahalanobis distance to the nearest class mean under the
pooled within-class covariance, the Gaussian model the linear discriminant already fits
(:mod:`aerial_assets.training.discriminant`, whose Spark pass computes the same totals here). The threshold is a
high quantile (99th by default) of the distances of held-out training tiles (the validation split), so about 1 %
of tiles like the training ones are flagged, and most tiles unlike them.

Features are L2-normalized first (the model is fitted on, and scores, unit vectors): measured on AID-trained
MobileNetV2 features, raw features flagged 6 % of 5 m NAIP tiles and normalized ones 62 %, both at about 1 % of
AID's own test tiles (``make bench-ood``; Mueller and Hein, "Mahalanobis++", 2025, report the same effect: CNN
feature norms vary within a class far more than their directions, and swamp the distance).

The covariance is shrunk (Ledoit-Wolf) and kept in a compact form that the scoring tasks carry: its top ``rank``
eigenvectors and eigenvalues, and one variance for every other direction (their mean). A tile's score is then a
few small matrix products; a d x d inverse (5952 features: 283 MB) never leaves the driver.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aerial_assets.records import OodTestRecord
from aerial_assets.training.discriminant import class_totals, ledoit_wolf, unit_rows

#: eigen-directions kept exactly; the rest share one variance
RANK = 128
#: the held-out quantile that sets the threshold
QUANTILE = 0.99
#: below this many held-out rows the threshold comes from a deterministic fifth of the training rows instead
MIN_HELDOUT = 20
_ROWS_PER_CHUNK = 512


@dataclass(frozen=True)
class NoveltyModel:
    """Class means and the shrunk pooled covariance in compact form, and the distance above which a tile is
    out of distribution."""

    means: np.ndarray      # (classes with rows, d)
    basis: np.ndarray      # (r, d) orthonormal rows: the covariance's top eigenvectors
    variances: np.ndarray  # (r,) their eigenvalues
    rest: float            # the mean eigenvalue of the other d - r directions (0 when r = d)
    shrinkage: float
    threshold: float = float("inf")
    quantile: float = QUANTILE
    n_fit: int = 0
    n_heldout: int = 0
    heldout: str = "validation"  # where the threshold came from: "validation" or "train fifth"

    def distances(self, x: np.ndarray, unit: bool = True) -> np.ndarray:
        """Mahalanobis distance of each row of ``x`` (normalized to unit length; ``unit=False``: as given, for a
        model fitted on raw rows, which ``make bench-ood`` compares) to the nearest class mean."""
        x = np.asarray(x, dtype=np.float64)
        x = unit_rows(x) if unit else x
        out = np.empty(len(x))
        mean_proj = self.means @ self.basis.T                      # (k, r)
        mean_sq = np.sum(self.means * self.means, axis=1)          # (k,)
        for start in range(0, len(x), _ROWS_PER_CHUNK):
            rows = x[start:start + _ROWS_PER_CHUNK]
            proj = rows @ self.basis.T                             # (n, r)
            diff = proj[:, None, :] - mean_proj[None, :, :]        # (n, k, r)
            in_basis = np.sum(diff * diff / self.variances, axis=2)
            sq = np.sum(rows * rows, axis=1)[:, None] - 2.0 * rows @ self.means.T + mean_sq[None, :]
            residual = np.maximum(sq - np.sum(diff * diff, axis=2), 0.0)
            total = in_basis + (residual / self.rest if self.rest > 0 else 0.0)
            out[start:start + len(rows)] = np.sqrt(total.min(axis=1))
        return out

    def with_threshold(self, heldout: np.ndarray, source: str, quantile: float = QUANTILE) -> NoveltyModel:
        """The same model with its threshold at ``quantile`` of the held-out distances."""
        if len(heldout) == 0:
            raise ValueError("no held-out rows to set the out-of-distribution threshold on")
        return NoveltyModel(self.means, self.basis, self.variances, self.rest, self.shrinkage,
                            float(np.quantile(heldout, quantile)), quantile, self.n_fit, len(heldout), source)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, means=self.means, basis=self.basis, variances=self.variances,
                 scalars=np.array([self.rest, self.shrinkage, self.threshold, self.quantile, self.n_fit,
                                   self.n_heldout]), heldout=np.array(self.heldout))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NoveltyModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            rest, shrinkage, threshold, quantile, n_fit, n_heldout = (float(v) for v in z["scalars"])
            return cls(z["means"], z["basis"], z["variances"], rest, shrinkage, threshold, quantile, int(n_fit),
                       int(n_heldout), str(z["heldout"]))


def top_eigen(matrix: np.ndarray, rank: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``rank`` largest eigenvalues and their eigenvectors (as rows) of a symmetric PSD matrix.

    Exact (``eigh``) up to 2048 dimensions; above, randomized subspace iteration (Halko et al. 2011), a few
    ``d x d`` by ``d x (rank + 32)`` products instead of a full decomposition (about a minute at 5952 on 2 cores)."""
    d = matrix.shape[0]
    rank = min(rank, d)
    if d <= 2048:
        values, vectors = np.linalg.eigh(matrix)
        order = np.argsort(values)[::-1][:rank]
        return values[order], vectors[:, order].T
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(matrix @ rng.standard_normal((d, rank + 32)))
    for _ in range(4):
        q, _ = np.linalg.qr(matrix @ q)
    small = q.T @ matrix @ q
    values, vectors = np.linalg.eigh(small)
    order = np.argsort(values)[::-1][:rank]
    return values[order], (q @ vectors[:, order]).T


def novelty_from_totals(gram: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                        fourth_moment_of: Callable[[np.ndarray], float], rank: int = RANK) -> NoveltyModel:
    """The model (no threshold yet) from pass 1's totals of unit-length rows: means, Ledoit-Wolf shrunk pooled
    covariance, its top eigen-directions."""
    n = int(counts.sum())
    present = counts > 0
    means = np.zeros_like(sums)
    means[present] = sums[present] / counts[present, None]
    scatter = gram - (means.T * counts) @ means
    shrinkage = ledoit_wolf(scatter, float(fourth_moment_of(means)), n)
    d = scatter.shape[0]
    cov = scatter / n
    mu = float(np.trace(cov)) / d
    values, vectors = top_eigen(cov, rank)
    values = np.maximum(values, 0.0)
    total = float(np.trace(cov))
    r = len(values)
    rest_raw = max(total - float(values.sum()), 0.0) / (d - r) if d > r else 0.0
    variances = (1.0 - shrinkage) * values + shrinkage * mu
    rest = (1.0 - shrinkage) * rest_raw + shrinkage * mu if d > r else 0.0
    floor = max(1e-12, 1e-9 * mu)  # no shrinkage and fewer rows than features: keep every variance positive
    return NoveltyModel(means[present], vectors, np.maximum(variances, floor),
                        max(rest, floor) if d > r else 0.0, float(shrinkage), n_fit=n)


def fit_novelty(train, n_classes: int, label_col: str, rank: int = RANK):
    """Fit on a Spark DataFrame of ``features`` (array) and ``label_col`` (class index) rows: one pass of sums and
    one of fourth moments, both on the executors, then the eigen-decomposition on the driver."""
    from pyspark.sql import functions as F

    rows = train.select(F.col("features").cast("array<double>").alias("x"), F.col(label_col).cast("long").alias("y"))
    totals = class_totals(rows, n_classes, "out-of-distribution model", unit=True)  # unit rows, as distances() scores
    return novelty_from_totals(totals.gram, totals.sums, totals.counts, totals.fourth_moment_of, rank)


def novelty_scorer(model: NoveltyModel):
    """A pandas UDF ``array<float> -> double``: the tile's distance. Runs inside the task that computes the
    features (no second pass over tiles); the model's arrays travel with the function (r + classes rows of d)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")
    def score(features: pd.Series) -> pd.Series:
        if features.empty:
            return pd.Series([], dtype="float64")
        present = features.notna().to_numpy()
        out = np.full(len(features), np.nan)
        if present.any():
            out[present] = model.distances(np.stack(features[present].to_numpy()))
        return pd.Series(out)

    return score


def fit_with_threshold(train, validation, n_classes: int, label_col: str, quantile: float = QUANTILE,
                       rank: int = RANK) -> NoveltyModel:
    """Fit on ``train`` and set the threshold on ``validation`` (rows: ``tile_id``, ``features`` array,
    ``label_col`` the class index). With fewer than ``MIN_HELDOUT`` validation rows (tiny training sets), the threshold comes from a
    deterministic fifth of the training tiles (by tile id) and the model from the other four fifths: distances of
    rows the model was fitted on are smaller than those of new tiles like them, and would set it too low."""
    from pyspark.sql import functions as F

    source = "validation"
    if validation.count() < MIN_HELDOUT:
        fifth = (F.abs(F.xxhash64("tile_id")) % 5) == 0
        train, validation, source = train.filter(~fifth), train.filter(fifth), "train fifth"
    model = fit_novelty(train, n_classes, label_col, rank)
    score = novelty_scorer(model)
    held = np.asarray([r[0] for r in validation.select(score(F.col("features"))).collect()], dtype=np.float64)
    return model.with_threshold(held, source, quantile)


def ood_on_test(predictions: pd.DataFrame, threshold: float) -> OodTestRecord:
    """The test split's share out of distribution, and the accuracy of the tiles on either side of the threshold
    (``predictions``: ``label``, ``pred_label``, ``ood_score``): the flag is useful when it marks errors more than
    correct predictions."""
    out = predictions["ood_score"].to_numpy(dtype=float) > threshold
    correct = (predictions["label"] == predictions["pred_label"]).to_numpy()
    n = len(predictions)
    return OodTestRecord(threshold=float(threshold), share_out=float(out.mean()) if n else 0.0, n_out=int(out.sum()),
                         accuracy_in=float(correct[~out].mean()) if (~out).any() else None,
                         accuracy_out=float(correct[out].mean()) if out.any() else None)
