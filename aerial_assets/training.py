"""Classifiers on backbone features with pyspark.ml, and their evaluation. No Dagster import.

SynapseML's role in the original sample (featurize + train on Spark) is taken by onnxruntime
(featurization) and pyspark.ml (training): SynapseML's JVM jars come from Maven, which these
machines cannot reach.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aerial_assets.errors import ConfigurationError
from aerial_assets.metrics import ClassificationReport, confusion_matrix, report

ALGORITHMS = ("logistic_regression", "random_forest")
FEATURES_COL, LABEL_COL = "features_vec", "label_idx"


def check_algorithm(name: str) -> str:
    if name not in ALGORITHMS:
        raise ConfigurationError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    return name


@dataclass(frozen=True)
class ClassifierParams:
    """Hyperparameters of every algorithm (the Dagster Config mirrors these fields).

    The original sample used random forest numTrees=20, maxDepth=5 and logistic regression
    regParam=0.01, maxIter=10; these defaults train longer and deeper, which pays off on
    1000+-dimensional CNN features.
    """

    lr_reg_param: float = 0.01
    lr_elastic_net: float = 0.0
    lr_max_iter: int = 100
    rf_num_trees: int = 100
    rf_max_depth: int = 10
    seed: int = 0

    def for_algorithm(self, algorithm: str) -> dict[str, Any]:
        if algorithm == "logistic_regression":
            return {"regParam": self.lr_reg_param, "elasticNetParam": self.lr_elastic_net, "maxIter": self.lr_max_iter}
        if algorithm == "random_forest":
            return {"numTrees": self.rf_num_trees, "maxDepth": self.rf_max_depth, "seed": self.seed}
        raise ConfigurationError(f"unknown algorithm {algorithm!r}; valid algorithms: {', '.join(ALGORITHMS)}")


def build_pipeline(algorithm: str, params: ClassifierParams):
    """An unfitted Pipeline: standardisation where the algorithm needs it, then the classifier."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression, RandomForestClassifier
    from pyspark.ml.feature import StandardScaler

    check_algorithm(algorithm)
    settings = params.for_algorithm(algorithm)
    if algorithm == "logistic_regression":
        scaler = StandardScaler(inputCol=FEATURES_COL, outputCol="scaled", withMean=True, withStd=True)
        clf = LogisticRegression(featuresCol="scaled", labelCol=LABEL_COL, family="multinomial", **settings)
        return Pipeline(stages=[scaler, clf])
    clf = RandomForestClassifier(featuresCol=FEATURES_COL, labelCol=LABEL_COL, **settings)
    return Pipeline(stages=[clf])


def with_vectors(df, classes: Sequence[str] | None = None):
    """Add the ML vector column (and the class index when ``classes`` is given)."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    out = df.withColumn(FEATURES_COL, array_to_vector(F.col("features")))
    if classes is not None:
        mapping = F.create_map(*[x for i, c in enumerate(classes) for x in (F.lit(c), F.lit(float(i)))])
        out = out.withColumn(LABEL_COL, mapping[F.col("label")])
    return out


def evaluate(model, df, classes: Sequence[str]) -> ClassificationReport:
    """Confusion matrix (aggregated on Spark: only class-pair counts reach the driver) and metrics."""
    scored = model.transform(with_vectors(df, classes))
    pairs = scored.groupBy(LABEL_COL, "prediction").count().collect()
    matrix = confusion_matrix(((r[LABEL_COL], r["prediction"], r["count"]) for r in pairs), len(classes))
    return report(matrix, classes)


def class_list(label_counts: Mapping[str, int]) -> list[str]:
    """The class order of every model: sorted names, so indices are stable across runs."""
    return sorted(label_counts)
