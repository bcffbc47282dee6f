"""Linear discriminant analysis with Ledoit-Wolf shrinkage, as a pyspark.ml estimator. No Dagster import.

Why it is here: on pooled CNN features (thousands of correlated dimensions, a few hundred tiles a class) a
shared-covariance Gaussian model with a shrunk covariance is a strong, fast classifier: on AID-30 (50/50 split,
the multi-level triple, every view a training row) it reached 95.2 % where logistic regression reached 94.2 %
(docs/decisions/0002-linear-discriminant.md). Spark ML has no such classifier (its ``LDA`` is the topic model) and scikit-learn's
``LinearDiscriminantAnalysis`` needs every row on one machine, so the fit is written here on Spark's DataFrame
API (``mapInPandas`` / ``applyInPandas``: it runs the same on a classic session, a cluster and Spark Connect).

The fit is two passes over the rows:

1. every partition sums its rows' outer products ``x xᵀ`` and, per class, the count and the sum of ``x``; the
   partial sums are added up on the executors (grouped by row of the matrix), and only the totals (a d x d
   matrix and one d-vector a class) reach the driver;
2. with the class means known, every partition sums ``‖x - m_y‖⁴``, the one statistic Ledoit-Wolf needs
   beyond the covariance.

The driver then forms the pooled within-class covariance ``S``, shrinks it towards ``μI`` by the Ledoit-Wolf
amount (the formula of ``sklearn.covariance.ledoit_wolf_shrinkage``, on class-centred rows) unless a fixed
``shrinkage`` is set, and solves ``Σ w_k = m_k`` for every class. The model is linear: ``rawPrediction`` is
``W x + b`` with ``b_k = -½ m_kᵀ w_k + log π_k``, ``probability`` its softmax, ``prediction`` the arg-max.

A partition's partial matrix is d² numbers (5952 features: 283 MB), as large as d rows of features, so pass 1
runs on at most one partition per ``2d`` rows (and at most the cluster's task slots): more partitions would move
more data than they save work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
)
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from aerial_assets.spark.jobs import task_slots

#: rows of the Gram matrix added up by one group of the reduction
_BLOCK_ROWS = 64
_STATS_SCHEMA = "kind string, key long, count long, vec array<double>"
_GRAM, _CLASS = "gram", "class"


@dataclass(frozen=True)
class DiscriminantFit:
    """What the fit computed: the linear model and the shrinkage it used (recorded with the classifier)."""

    coefficients: np.ndarray  # (classes, features)
    intercepts: np.ndarray    # (classes,)
    shrinkage: float


def ledoit_wolf(scatter: np.ndarray, fourth_moment: float, n: int) -> float:
    """The Ledoit-Wolf shrinkage of the covariance ``scatter / n`` of ``n`` centred rows towards ``μI``.

    ``scatter`` is ``Σ c cᵀ`` and ``fourth_moment`` is ``Σ ‖c‖⁴`` over the centred rows ``c``: with these two
    sums the formula of ``sklearn.covariance.ledoit_wolf_shrinkage`` needs no row, so it runs on totals that
    Spark added up."""
    d = scatter.shape[0]
    cov = scatter / n
    trace = float(np.trace(cov))
    mu = trace / d
    delta_ = float(np.sum(cov * cov))
    beta = (fourth_moment / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu * mu) / d
    if delta <= 0:
        return 0.0
    return float(min(max(beta, 0.0), delta) / delta)


def solve(gram: np.ndarray, sums: np.ndarray, counts: np.ndarray, fourth_moment_of: Callable[[np.ndarray], float],
          shrinkage: float | None) -> DiscriminantFit:
    """The model from the totals of pass 1 (``gram`` = Σ x xᵀ, per-class ``sums`` and ``counts``).

    ``fourth_moment_of(means)`` runs pass 2 (it is only called when the shrinkage is estimated). A class without
    rows gets an intercept of -inf in effect (it is never predicted, its probability is 0)."""
    n = int(counts.sum())
    present = counts > 0
    means = np.zeros_like(sums)
    means[present] = sums[present] / counts[present, None]
    scatter = gram - (means.T * counts) @ means  # Σ (x - m_y)(x - m_y)ᵀ = Σ x xᵀ - Σ_k n_k m_k m_kᵀ
    if shrinkage is None:
        shrinkage = ledoit_wolf(scatter, float(fourth_moment_of(means)), n)
    d = scatter.shape[0]
    cov = scatter / n
    sigma = (1.0 - shrinkage) * cov
    sigma[np.diag_indices(d)] += shrinkage * np.trace(cov) / d
    try:
        weights = np.linalg.solve(sigma, means[present].T).T
    except np.linalg.LinAlgError:  # singular without shrinkage (more features than rows): least squares
        weights = np.linalg.lstsq(sigma, means[present].T, rcond=None)[0].T
    coefficients = np.zeros_like(means)
    coefficients[present] = weights
    intercepts = np.full(len(counts), -1e300)
    intercepts[present] = -0.5 * np.sum(means[present] * weights, axis=1) + np.log(counts[present] / n)
    return DiscriminantFit(coefficients, intercepts, float(shrinkage))


def _as_matrix(column: pd.Series) -> np.ndarray:
    return np.stack(column.to_numpy()).astype(np.float64)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def partial_sums(n_classes: int, features_col: str, label_col: str, unit: bool = False
                 ) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """``mapInPandas`` function of pass 1: one partition's Σ x xᵀ (as rows ``(gram, i)``) and, per class, the
    count and Σ x (as rows ``(class, k)``); ``unit``: of the rows scaled to unit length."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        gram = None
        sums = counts = None
        for frame in frames:
            if frame.empty:
                continue
            x = _as_matrix(frame[features_col])
            x = unit_rows(x) if unit else x
            y = frame[label_col].to_numpy().astype(np.int64)
            if gram is None:
                gram = np.zeros((x.shape[1], x.shape[1]))
                sums = np.zeros((n_classes, x.shape[1]))
                counts = np.zeros(n_classes, dtype=np.int64)
            gram += x.T @ x
            np.add.at(sums, y, x)
            counts += np.bincount(y, minlength=n_classes)
        if gram is None:
            return
        yield pd.DataFrame({"kind": _CLASS, "key": np.arange(n_classes), "count": counts, "vec": list(sums)})
        for start in range(0, len(gram), _BLOCK_ROWS):
            rows = np.arange(start, min(start + _BLOCK_ROWS, len(gram)))
            yield pd.DataFrame({"kind": _GRAM, "key": rows, "count": 0, "vec": list(gram[rows])})

    return run


def _add_up(frame: pd.DataFrame) -> pd.DataFrame:
    """``applyInPandas`` function: the partitions' partial rows with the same (kind, key), added up."""
    out = []
    for (kind, key), rows in frame.groupby(["kind", "key"], sort=False):
        out.append((kind, key, int(rows["count"].sum()), _as_matrix(rows["vec"]).sum(axis=0)))
    return pd.DataFrame(out, columns=["kind", "key", "count", "vec"])


def fourth_moments(means: np.ndarray, features_col: str, label_col: str, unit: bool = False
                   ) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """``mapInPandas`` function of pass 2: one partition's Σ ‖x - m_y‖⁴ (``unit``: of unit-length rows)."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        total = 0.0
        for frame in frames:
            if frame.empty:
                continue
            x = _as_matrix(frame[features_col])
            centred = (unit_rows(x) if unit else x) - means[frame[label_col].to_numpy().astype(np.int64)]
            total += float(np.sum(np.sum(centred * centred, axis=1) ** 2))
        yield pd.DataFrame({"total": [total]})

    return run


@dataclass(frozen=True)
class ClassTotals:
    """Pass 1's totals over a DataFrame of rows ``(x array<double>, y long)``, and pass 2 on demand."""

    gram: np.ndarray    # Σ x xᵀ, (d, d)
    sums: np.ndarray    # Σ x per class, (classes, d)
    counts: np.ndarray  # rows per class
    fourth_moment_of: Callable[[np.ndarray], float]  # Σ ‖x - m_y‖⁴ for given class means (a Spark job)


def class_totals(rows, n_classes: int, who: str, unit: bool = False) -> ClassTotals:
    """Pass 1 on Spark (module docstring): the totals a shared-covariance Gaussian model needs, added up on the
    executors. ``n_classes`` 0: one more than the largest label. Also used by the novelty model
    (:mod:`aerial_assets.training.novelty`), which fits the same Gaussian model of the features scaled to unit
    length (``unit``: scaled in the tasks, with numpy; a Spark SQL expression recomputing the norm per element
    was quadratic in the features)."""
    from pyspark.sql import functions as F

    n, width, top_label = rows.agg(F.count("*"), F.max(F.size("x")), F.max("y")).first()  # one job
    if not n:
        raise ValueError(f"{who}: no training rows")
    d = int(width)
    n_classes = n_classes or int(top_label) + 1
    parts = max(1, min(task_slots(rows.sparkSession), n // (2 * d)))
    stats = (rows.coalesce(parts)
             .mapInPandas(partial_sums(n_classes, "x", "y", unit), _STATS_SCHEMA)
             .groupBy((F.col("key") / _BLOCK_ROWS).cast("long").alias("block"), "kind")
             .applyInPandas(_add_up, _STATS_SCHEMA)
             .toPandas())
    gram = np.zeros((d, d))
    sums = np.zeros((n_classes, d))
    counts = np.zeros(n_classes, dtype=np.int64)
    for kind, key, count, vec in stats.itertuples(index=False):
        if kind == _GRAM:
            gram[key] = vec
        else:
            sums[key], counts[key] = vec, count

    def fourth_moment_of(means: np.ndarray) -> float:
        return float(rows.mapInPandas(fourth_moments(means, "x", "y", unit), "total double")
                     .agg(F.sum("total")).first()[0])

    return ClassTotals(gram, sums, counts, fourth_moment_of)


class _DiscriminantParams(HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol, HasRawPredictionCol):
    numClasses = Param(Params._dummy(), "numClasses", "classes (label values 0 .. numClasses-1)",
                       typeConverter=TypeConverters.toInt)
    shrinkage = Param(Params._dummy(), "shrinkage", "shrinkage of the covariance towards a multiple of the identity, "
                      "0..1; -1 = the Ledoit-Wolf estimate", typeConverter=TypeConverters.toFloat)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(numClasses=0, shrinkage=-1.0)


class ShrinkageLDA(Estimator, _DiscriminantParams, DefaultParamsReadable, DefaultParamsWritable):
    """Linear discriminant analysis with a shrunk pooled covariance (module docstring: why and how)."""

    @keyword_only
    def __init__(self, *, featuresCol: str = "features", labelCol: str = "label", predictionCol: str = "prediction",
                 probabilityCol: str = "probability", rawPredictionCol: str = "rawPrediction",
                 numClasses: int = 0, shrinkage: float = -1.0) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    def _fit(self, dataset) -> ShrinkageLDAModel:
        from pyspark.ml.functions import vector_to_array
        from pyspark.sql import functions as F

        features, label = self.getFeaturesCol(), self.getLabelCol()
        rows = dataset.select(vector_to_array(F.col(features)).alias("x"), F.col(label).cast("long").alias("y"))
        totals = class_totals(rows, self.getOrDefault(self.numClasses), "ShrinkageLDA")
        fixed = self.getOrDefault(self.shrinkage)
        result = solve(totals.gram, totals.sums, totals.counts, totals.fourth_moment_of, None if fixed < 0 else fixed)
        model = ShrinkageLDAModel(coefficients=result.coefficients.tolist(), intercepts=result.intercepts.tolist(),
                                  fittedShrinkage=result.shrinkage)
        return self._copyValues(model)


class ShrinkageLDAModel(Model, _DiscriminantParams, DefaultParamsReadable, DefaultParamsWritable):
    """The fitted linear model (stored as params, so ``PipelineModel`` saves and loads it with the pipeline)."""

    coefficients = Param(Params._dummy(), "coefficients", "one weight row per class",
                         typeConverter=TypeConverters.toListListFloat)
    intercepts = Param(Params._dummy(), "intercepts", "one intercept per class", typeConverter=TypeConverters.toListFloat)
    fittedShrinkage = Param(Params._dummy(), "fittedShrinkage", "the shrinkage the fit used",
                            typeConverter=TypeConverters.toFloat)

    @keyword_only
    def __init__(self, *, coefficients: list[list[float]] | None = None, intercepts: list[float] | None = None,
                 fittedShrinkage: float = 0.0) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector, vector_to_array
        from pyspark.sql import functions as F
        from pyspark.sql.functions import pandas_udf

        weights = np.asarray(self.getOrDefault(self.coefficients), dtype=np.float64)
        bias = np.asarray(self.getOrDefault(self.intercepts), dtype=np.float64)

        @pandas_udf("raw array<double>, probability array<double>, prediction double")
        def score(x: pd.Series) -> pd.DataFrame:
            if x.empty:
                return pd.DataFrame({"raw": [], "probability": [], "prediction": []})
            raw = _as_matrix(x) @ weights.T + bias
            shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
            probability = shifted / shifted.sum(axis=1, keepdims=True)
            return pd.DataFrame({"raw": list(raw), "probability": list(probability),
                                 "prediction": raw.argmax(axis=1).astype(np.float64)})

        tmp = "__discriminant"
        scored = dataset.withColumn(tmp, score(vector_to_array(F.col(self.getFeaturesCol()))))
        return (scored.withColumn(self.getRawPredictionCol(), array_to_vector(F.col(f"{tmp}.raw")))
                .withColumn(self.getProbabilityCol(), array_to_vector(F.col(f"{tmp}.probability")))
                .withColumn(self.getPredictionCol(), F.col(f"{tmp}.prediction"))
                .drop(tmp))
