"""Classifiers on backbone features with pyspark.ml: pipelines, hyperparameter search, evaluation.

No Dagster import. pyspark.ml's estimators and the project's discriminant run on every Spark line; ``lightgbm`` is
SynapseML's ``LightGBMClassifier`` (the original sample's MMLSpark), available where the session loads SynapseML's
classes (:mod:`aerial_assets.spark.synapseml`: the 3.5 line with ``make jars``, or a cluster that has it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aerial_assets.errors import ConfigurationError
from aerial_assets.records import Augmentation, ViewChoice
from aerial_assets.tables import TRAINING
from aerial_assets.training.metrics import ClassificationReport, confusion_matrix, report

#: The algorithms every Spark line runs (pyspark.ml and the project's own discriminant).
PYSPARK_ML_ALGORITHMS = ("logistic_regression", "random_forest", "mlp", "linear_discriminant")
#: ... and those that need SynapseML on the session.
SYNAPSEML_ALGORITHMS = ("lightgbm",)
ALGORITHMS = PYSPARK_ML_ALGORITHMS + SYNAPSEML_ALGORITHMS
Search = Literal["none", "train_validation_split", "cross_validation"]
SEARCHES: tuple[str, ...] = get_args(Search)
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)
FEATURES_COL, LABEL_COL = "features_vec", "label_idx"
TRAINING_SCHEMA = TRAINING.ddl


def check_algorithm(name: str) -> str:
    if name not in ALGORITHMS:
        raise ConfigurationError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    return name


class ClassifierParams(BaseModel):
    """Hyperparameters, search grids, views and augmentation of every algorithm: the one definition (the Dagster
    config of ``land_use_classifiers`` is this model, so a bad value is refused when a run is launched
    (``search``, ``augmentation``) or when the step starts (the numeric bounds and ``views``)).

    The original sample used random forest numTrees=20, maxDepth=5 and logistic regression
    regParam=0.01, maxIter=10; these defaults train longer and deeper, which pays off on
    1000+-dimensional CNN features. A grid with more than one value is searched with Spark ML's
    TrainValidationSplit (or CrossValidator) on the training split only; the validation split stays
    for the champion choice and the test split for the final report.
    """

    model_config = ConfigDict(frozen=True)

    lr_reg_param: float = Field(default=0.01, ge=0.0)
    lr_elastic_net: float = Field(default=0.0, ge=0.0, le=1.0)
    lr_max_iter: int = Field(default=100, ge=1)
    rf_num_trees: int = Field(default=100, ge=1)
    rf_max_depth: int = Field(default=10, ge=1)
    mlp_hidden: int = Field(default=256, ge=1)
    mlp_max_iter: int = Field(default=200, ge=1)
    mlp_block_size: int = Field(default=128, ge=1)
    gbm_num_iterations: int = Field(default=200, ge=1, description="lightgbm: boosting rounds")
    gbm_learning_rate: float = Field(default=0.1, gt=0.0)
    gbm_num_leaves: int = Field(default=31, ge=2)
    gbm_min_data_in_leaf: int = Field(default=20, ge=1, description="lightgbm: fewest training rows in a leaf "
                                      "(LightGBM's default, 20); lower it for training sets of a few dozen tiles "
                                      "per class, where no split would otherwise be allowed")
    lda_shrinkage: float | None = Field(default=None, ge=0.0, le=1.0, description="linear_discriminant: how far "
                                        "the covariance is shrunk towards a multiple of the identity; empty = "
                                        "the Ledoit-Wolf estimate from the training rows")
    seed: int = 0
    search: Search = "train_validation_split"
    search_folds: int = 3
    search_train_ratio: float = Field(default=0.8, gt=0.0, lt=1.0)
    lr_reg_param_grid: list[float] = [0.001, 0.01, 0.1]
    rf_max_depth_grid: list[int] = []
    mlp_hidden_grid: list[int] = []
    lda_shrinkage_grid: list[float] = []
    gbm_num_leaves_grid: list[int] = []
    views: ViewChoice = Field(default=0, description="rotated/flipped views averaged per tile: 1, 4, 8, or 0 for "
                              "every view tile_features computed")
    augmentation: Augmentation = Field(default="average", description="'average': one row per tile, features "
                                       "averaged over the views; 'augment': every view of a training tile is a "
                                       "training row")

    @model_validator(mode="after")
    def _folds(self) -> ClassifierParams:
        if self.search == "cross_validation" and self.search_folds < 2:
            raise ValueError("cross_validation needs search_folds >= 2")
        return self

    def for_algorithm(self, algorithm: str) -> dict[str, Any]:
        """The fixed settings of the algorithm's estimator (searched ones start from these values)."""
        if algorithm == "logistic_regression":
            return {"regParam": self.lr_reg_param, "elasticNetParam": self.lr_elastic_net, "maxIter": self.lr_max_iter}
        if algorithm == "random_forest":
            return {"numTrees": self.rf_num_trees, "maxDepth": self.rf_max_depth, "seed": self.seed}
        if algorithm == "mlp":
            return {"hidden": self.mlp_hidden, "maxIter": self.mlp_max_iter, "blockSize": self.mlp_block_size,
                    "seed": self.seed}
        if algorithm == "linear_discriminant":
            return {"shrinkage": -1.0 if self.lda_shrinkage is None else self.lda_shrinkage}
        if algorithm == "lightgbm":
            return {"numIterations": self.gbm_num_iterations, "learningRate": self.gbm_learning_rate,
                    "numLeaves": self.gbm_num_leaves, "minDataInLeaf": self.gbm_min_data_in_leaf, "seed": self.seed}
        raise ConfigurationError(f"unknown algorithm {algorithm!r}; valid algorithms: {', '.join(ALGORITHMS)}")

    def grid_for(self, algorithm: str) -> dict[str, list]:
        """The searched hyperparameter -> candidate values (empty: nothing to search)."""
        grid = {
            "logistic_regression": {"regParam": list(self.lr_reg_param_grid)},
            "random_forest": {"maxDepth": list(self.rf_max_depth_grid)},
            "mlp": {"hidden": list(self.mlp_hidden_grid)},
            "linear_discriminant": {"shrinkage": list(self.lda_shrinkage_grid)},
            "lightgbm": {"numLeaves": list(self.gbm_num_leaves_grid)},
        }[check_algorithm(algorithm)]
        return {name: values for name, values in grid.items() if len(values) > 1}


def _estimator(algorithm: str, settings: Mapping[str, Any], n_features: int, n_classes: int, threads: int = 1):
    from pyspark.ml.classification import LogisticRegression, MultilayerPerceptronClassifier, RandomForestClassifier

    if algorithm == "lightgbm":
        from aerial_assets.spark.synapseml import import_synapseml

        LightGBMClassifier = import_synapseml("synapse.ml.lightgbm").LightGBMClassifier  # noqa: N806

        # numThreads: the executor's cores. SynapseML runs one LightGBM worker per executor (single dataset mode),
        # and LightGBM's own default on a container is not its core count: on a 1-core executor a fit took 48 s
        # instead of 6.5 s (issue 34). verbosity -1: LightGBM's per-iteration lines would flood executor logs.
        return LightGBMClassifier(
            featuresCol=FEATURES_COL, labelCol=LABEL_COL, objective="multiclass", numThreads=max(1, threads),
            numIterations=int(settings["numIterations"]), learningRate=float(settings["learningRate"]),
            numLeaves=int(settings["numLeaves"]), minDataInLeaf=int(settings["minDataInLeaf"]),
            seed=int(settings["seed"]), deterministic=True, verbosity=-1)

    if algorithm == "logistic_regression":
        return LogisticRegression(featuresCol="scaled", labelCol=LABEL_COL, family="multinomial", **settings)
    if algorithm == "random_forest":
        return RandomForestClassifier(featuresCol=FEATURES_COL, labelCol=LABEL_COL, **settings)
    if algorithm == "linear_discriminant":
        from aerial_assets.training.discriminant import ShrinkageLDA

        return ShrinkageLDA(featuresCol="scaled", labelCol=LABEL_COL, numClasses=n_classes, **settings)
    return MultilayerPerceptronClassifier(
        featuresCol="scaled", labelCol=LABEL_COL, layers=[n_features, int(settings["hidden"]), n_classes],
        maxIter=int(settings["maxIter"]), blockSize=int(settings["blockSize"]), seed=int(settings["seed"]),
    )


def build_pipeline(algorithm: str, params: ClassifierParams, n_features: int = 0, n_classes: int = 0,
                   overrides: Mapping[str, Any] | None = None, threads: int = 1):
    """An unfitted Pipeline: standardisation where the algorithm needs it (linear models, the MLP and the
    discriminant's shrinkage towards the identity are scale-sensitive; trees are not), then the classifier."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StandardScaler

    check_algorithm(algorithm)
    settings = {**params.for_algorithm(algorithm), **(overrides or {})}
    clf = _estimator(algorithm, settings, n_features, n_classes, threads)
    if algorithm in ("random_forest", "lightgbm"):  # trees: the scale of a feature does not matter
        return Pipeline(stages=[clf])
    scaler = StandardScaler(inputCol=FEATURES_COL, outputCol="scaled", withMean=True, withStd=True)
    return Pipeline(stages=[scaler, clf])


def load_pipeline(session, path: str, algorithm: str):
    """A saved pipeline of ``algorithm``, read with ``session`` (SynapseML's Python classes first for its stages)."""
    from pyspark.ml import PipelineModel

    if algorithm in SYNAPSEML_ALGORITHMS:
        from aerial_assets.spark.synapseml import import_synapseml

        import_synapseml("synapse.ml.lightgbm")
    return PipelineModel.read().session(session).load(path)


#: What the hyperparameter search maximises: the metric the champion is picked on (validation macro-F1).
SEARCH_METRIC = "macro_f1"


@dataclass
class SearchResult:
    """What the hyperparameter search tried and chose (recorded as metadata)."""

    method: str
    chosen: dict[str, Any]
    candidates: list[dict[str, Any]]
    scores: list[float]
    metric: str = SEARCH_METRIC

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "metric": self.metric, "chosen": self.chosen,
                "candidates": [{**c, self.metric: round(s, 4)} for c, s in zip(self.candidates, self.scores,
                                                                                strict=True)]}


def macro_f1_evaluator(n_classes: int):
    """A pyspark.ml ``Evaluator`` of macro-F1 over ``n_classes`` (``label_idx`` vs ``prediction``).

    Spark ML's ``MulticlassClassificationEvaluator`` offers accuracy and *weighted* F1 but not macro-F1, the
    metric the champion is chosen on; a search that optimised another metric would pick hyperparameters
    for a goal the comparison does not reward (on imbalanced classes, accuracy favours the large ones).
    The evaluation is one aggregation of (class, prediction) counts on Spark and :func:`metrics.report` on
    the driver, the same arithmetic as the reports: a Python evaluator, which Spark ML's tuners accept.
    """
    from pyspark.ml.evaluation import Evaluator

    class MacroF1Evaluator(Evaluator):
        def _evaluate(self, dataset) -> float:
            pairs = dataset.groupBy(LABEL_COL, "prediction").count().collect()
            matrix = confusion_matrix(((r[0], r[1], r[2]) for r in pairs), n_classes)
            return report(matrix, [str(i) for i in range(n_classes)]).macro_f1

        def isLargerBetter(self) -> bool:
            return True

    return MacroF1Evaluator()


def fit(algorithm: str, params: ClassifierParams, train, n_features: int, n_classes: int,
        parallelism: int, group_col: str | None = None, threads: int = 1) -> tuple[Any, SearchResult]:
    """Fit the pipeline, searching the grid first when it has more than one candidate.

    The MLP's hidden width changes the layer list, which a ParamGrid cannot express on one estimator,
    so every candidate is its own pipeline; the search then compares whole pipelines, evaluated the
    same way (TrainValidationSplit / CrossValidator over a one-element grid each is wasteful, so the
    split is done once here for the MLP and through Spark ML's tuning classes for the others).

    ``group_col`` (the tile id, with train-time augmentation): rows sharing it are views of one tile
    and must fall on the same side of every search split. Spark ML's tuners split rows at random,
    which would put a tile's rotations on both sides, score memorised tiles and favour the weakest
    regularisation; grouped searches therefore split by a hash of the group column.

    ``threads``: the cores of one executor, for estimators that run native threads of their own (lightgbm).
    """
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit

    grid = params.grid_for(algorithm)
    base = params.for_algorithm(algorithm)
    if params.search == "none" or not grid:
        model = build_pipeline(algorithm, params, n_features, n_classes, threads=threads).fit(train)
        return model, SearchResult("none", base, [base], [float("nan")])
    evaluator = macro_f1_evaluator(n_classes)
    names = list(grid)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]
    if algorithm == "mlp" or group_col is not None:
        return _search_pipelines(algorithm, params, train, n_features, n_classes, combos, evaluator, group_col,
                                 threads)
    pipeline = build_pipeline(algorithm, params, n_features, n_classes, threads=threads)
    clf = pipeline.getStages()[-1]
    builder = ParamGridBuilder()
    for name, values in grid.items():
        builder = builder.addGrid(clf.getParam(name), values)
    maps = builder.build()
    common = {"estimator": pipeline, "estimatorParamMaps": maps, "evaluator": evaluator,
              "parallelism": max(1, parallelism), "seed": params.seed}
    if params.search == "cross_validation":
        tuner = CrossValidator(numFolds=params.search_folds, **common)
    else:
        tuner = TrainValidationSplit(trainRatio=params.search_train_ratio, **common)
    fitted = tuner.fit(train)
    scores = list(fitted.avgMetrics if params.search == "cross_validation" else fitted.validationMetrics)
    candidates = [{p.name: v for p, v in m.items()} for m in maps]
    best = int(np.argmax(scores))
    return fitted.bestModel, SearchResult(params.search, {**base, **candidates[best]}, candidates, scores)


def search_splits(train, params: ClassifierParams, group_col: str | None = None) -> list[tuple[Any, Any]]:
    """(fit part, held-out part) pairs of the search: one for train_validation_split, ``search_folds``
    for cross_validation. Seeded row splits, or, with ``group_col``, splits by a seeded hash of it so
    that all rows of a group land on the same side."""
    if group_col is None:
        if params.search == "cross_validation":
            folds = train.randomSplit([1.0] * params.search_folds, seed=params.seed)
            return [(_union(folds[:i] + folds[i + 1:]), folds[i]) for i in range(len(folds))]
        fit_part, held = train.randomSplit([params.search_train_ratio, 1 - params.search_train_ratio],
                                           seed=params.seed)
        return [(fit_part, held)]
    from pyspark.sql import functions as F

    bucket = F.pmod(F.xxhash64(F.col(group_col), F.lit(params.seed)), F.lit(1000))
    if params.search == "cross_validation":
        k = params.search_folds
        return [(train.filter(bucket % k != i), train.filter(bucket % k == i)) for i in range(k)]
    cut = int(round(params.search_train_ratio * 1000))
    return [(train.filter(bucket < cut), train.filter(bucket >= cut))]


def _search_pipelines(algorithm, params, train, n_features, n_classes, combos, evaluator, group_col=None,
                      threads=1):
    """Search by fitting one pipeline per candidate on seeded splits of the training data."""
    splits = search_splits(train, params, group_col)
    scores = []
    for combo in combos:
        values = [evaluator.evaluate(build_pipeline(algorithm, params, n_features, n_classes, combo, threads)
                                     .fit(a).transform(b))
                  for a, b in splits]
        scores.append(float(np.mean(values)))
    best = combos[int(np.argmax(scores))]
    model = build_pipeline(algorithm, params, n_features, n_classes, best, threads).fit(train)
    return model, SearchResult(params.search, {**params.for_algorithm(algorithm), **best}, combos, scores)


def _union(frames):
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def view_selector(views: int, computed_views: int, augment: bool) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """``mapInPandas`` function turning stored features into training rows.

    ``view_features`` holds ``computed_views`` vectors per tile. The first ``views`` of them are
    averaged into one row per tile (test-time augmentation), or, with ``augment``, every view of a
    *training* tile becomes its own row (train-time augmentation: ``views`` x the training rows);
    validation and test tiles are always one averaged row, so they are scored like county tiles.
    """

    def select(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            if frame.empty:
                yield frame[["tile_id", "label", "split", "features"]]
                continue
            stacked = np.stack(frame["view_features"].to_numpy()).astype(np.float32)
            per_view = stacked.reshape(len(frame), computed_views, -1)[:, :views]
            mean = per_view.mean(axis=1)
            out = frame[["tile_id", "label", "split"]].copy()
            out["features"] = list(mean)
            if augment:
                train = (frame["split"] == "train").to_numpy()
                extra = []
                for v in range(1, views):
                    rows = frame.loc[train, ["tile_id", "label", "split"]].copy()
                    rows["features"] = list(per_view[train, v])
                    extra.append(rows)
                out.loc[train, "features"] = pd.Series(list(per_view[train, 0]), index=out.index[train])
                out = pd.concat([out, *extra], ignore_index=True)
            yield out

    return select


def training_rows(features, views: int, computed_views: int, augment: bool):
    """The rows a classifier trains and is evaluated on, for ``views`` of the ``computed_views`` stored."""
    if views > computed_views:
        raise ConfigurationError(
            f"the classifier asks for {views} views but tile_features holds {computed_views}: "
            f"re-materialize tile_features with views={views} (or more)"
        )
    if computed_views == 1 or (views == computed_views and not augment):
        return features.select("tile_id", "label", "split", "features")
    return features.mapInPandas(view_selector(views, computed_views, augment), TRAINING_SCHEMA)


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
    from pyspark.sql import functions as F

    return evaluate_splits(model, df.withColumn("split", F.lit("all")), classes, ["all"])["all"]


def evaluate_splits(model, df, classes: Sequence[str], splits: Sequence[str]) -> dict[str, ClassificationReport]:
    """One report per split of ``df`` (column ``split``), from one Spark job: one pass over the rows, one
    aggregation of (split, class, prediction) counts; a cluster pays for one job, not one per split."""
    from pyspark.sql import functions as F

    scored = model.transform(with_vectors(df.filter(F.col("split").isin(list(splits))), classes))
    pairs = scored.groupBy("split", LABEL_COL, "prediction").count().collect()
    out = {}
    for split in splits:
        rows = ((r[LABEL_COL], r["prediction"], r["count"]) for r in pairs if r["split"] == split)
        out[split] = report(confusion_matrix(rows, len(classes)), classes)
    return out


def split_predictions(model, df, classes: Sequence[str], split: str = "test", extra: Sequence[str] = ()):
    """Per-tile predictions of one split (the original sample's ``<model>_predictions_test_set.csv``):
    ``tile_id``, ``label``, ``pred_label`` and the probability of every class, as a pandas frame.

    Collected to the driver, like the catalog the split comes from (which the driver already holds as one
    table): one row per held-out tile, not per county tile. ``extra``: columns of ``df`` to keep (computed in
    the same pass, such as the out-of-distribution score)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    scored = model.transform(with_vectors(df.filter(F.col("split") == split), classes))
    names = F.array(*[F.lit(c) for c in classes])
    probability = vector_to_array("probability")
    return scored.select(
        "tile_id", "label", F.element_at(names, F.col("prediction").cast("int") + 1).alias("pred_label"),
        *[probability[i].alias(f"prob_{c}") for i, c in enumerate(classes)], *extra,
    ).orderBy("tile_id").toPandas()


def class_list(label_counts: Mapping[str, int]) -> list[str]:
    """The class order of every model: sorted names, so indices are stable across runs."""
    return sorted(label_counts)
