"""Group ``training``: classifiers per backbone x algorithm, their metrics, the leaderboard, the champion."""


import io
import time

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetDep,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    MultiPartitionKey,
    asset,
    asset_check,
)
from pydantic import Field

from aerial_assets.assets._io import markdown_table, read_json, write_json
from aerial_assets.catalog import OK
from aerial_assets.errors import AerialError
from aerial_assets.metrics import ClassificationReport
from aerial_assets.partitions import by_backbone, classifier_partitions
from aerial_assets.rendering import confusion_png, markdown_image
from aerial_assets.resources import SparkResource, StorageResource
from aerial_assets.storage import join, storage_for
from aerial_assets.training import ClassifierParams, class_list, evaluate, fit, training_rows, with_vectors

LEADERBOARD_COLUMNS = ["backbone", "algorithm", "accuracy", "macro_f1", "n_train", "n_test", "fit_seconds"]
EXTRA_COLUMNS = ["views", "augmentation", "val_accuracy", "val_macro_f1", "n_validation", "model_id"]


class ClassifierConfig(Config):
    """Hyperparameters, search grids and augmentation. Defaults suit CNN features; the original sample used
    rf_num_trees=20, rf_max_depth=5, lr_reg_param=0.01, lr_max_iter=10. A grid with two or more values is
    searched on the training split (`search`: train_validation_split, cross_validation or none)."""

    lr_reg_param: float = 0.01
    lr_elastic_net: float = 0.0
    lr_max_iter: int = 100
    rf_num_trees: int = 100
    rf_max_depth: int = 10
    mlp_hidden: int = 256
    mlp_max_iter: int = 200
    mlp_block_size: int = 128
    seed: int = 0
    search: str = "train_validation_split"
    search_folds: int = 3
    search_train_ratio: float = 0.8
    lr_reg_param_grid: list[float] = [0.001, 0.01, 0.1]
    rf_max_depth_grid: list[int] = []
    mlp_hidden_grid: list[int] = []
    views: int = Field(default=0, description="rotated/flipped views averaged per tile: 1, 4, 8, or 0 for every "
                       "view tile_features computed")
    augmentation: str = Field(default="average", description="'average': one row per tile, features averaged over "
                              "the views; 'augment': every view of a training tile is a training row")


def _keys(context: AssetExecutionContext) -> tuple[str, str]:
    """(backbone, algorithm) of a classifier partition."""
    key = context.partition_key
    if not isinstance(key, MultiPartitionKey):
        key = classifier_partitions.get_partition_key_from_str(key)
    dims = key.keys_by_dimension
    return dims["backbone"], dims["algorithm"]


def _features(spark: SparkResource, storage: StorageResource, backbone: str):
    path = join(storage.layout.tile_features(backbone), "features.parquet")
    return spark.session.read.parquet(storage.storage.spark_path(path)).filter(f"status = '{OK}'")


def computed_views(storage: StorageResource, backbone: str) -> int:
    """How many views tile_features stored for ``backbone`` (1 for features written before views existed)."""
    folder = storage.layout.tile_features(backbone)
    if not storage.storage.exists(join(folder, "summary.json")):
        return 1
    return int(read_json(storage.storage, folder, "summary.json").get("views", 1))


def _rows(spark: SparkResource, storage: StorageResource, backbone: str, views: int, augment: bool):
    """(rows, views used): the classifier's rows from the stored features (see training.training_rows)."""
    stored = computed_views(storage, backbone)
    used = views or stored
    return training_rows(_features(spark, storage, backbone), used, stored, augment), used


@asset(
    group_name="training",
    partitions_def=classifier_partitions,
    deps=[AssetDep("tile_features", partition_mapping=by_backbone)],
    kinds={"spark", "pyspark_ml"},
)
def land_use_classifiers(
    context: AssetExecutionContext, config: ClassifierConfig, spark: SparkResource, storage: StorageResource
) -> MaterializeResult:
    """A fitted pyspark.ml PipelineModel per backbone x algorithm, trained on the train split's features.

    Logistic regression standardises features first; random forest reads them raw. The class order
    (sorted names) and hyperparameters are saved next to the model.
    """
    backbone, algorithm = _keys(context)
    params = ClassifierParams(**config.model_dump())
    params.check()
    augment = params.augmentation == "augment"
    rows, views = _rows(spark, storage, backbone, params.views, augment)
    train = rows.filter("split = 'train'").cache()
    counts = {r["label"]: int(r["count"]) for r in train.groupBy("label").count().collect()}
    if len(counts) < 2:
        raise AerialError(f"the train split of {backbone} features has {len(counts)} class(es); need at least two")
    classes = class_list(counts)
    n_features = len(train.select("features").first()["features"])
    started = time.monotonic()
    model, search = fit(algorithm, params, with_vectors(train, classes), n_features, len(classes),
                        spark.task_parallelism(), group_col="tile_id" if augment else None)
    fit_seconds = time.monotonic() - started
    train.unpersist()
    n_train_tiles = int(sum(counts.values()) // (views if augment else 1))
    model_id = f"{backbone}.{algorithm}.{context.run_id[:8]}"
    out = storage.layout.classifier(backbone, algorithm)
    with storage.storage.atomic_dir(out) as tmp:
        model.write().overwrite().save(storage_for(tmp).spark_path(join(tmp, "pipeline_model")))
        write_json(storage_for(tmp), tmp, "classifier.json", {
            "model_id": model_id, "backbone": backbone, "algorithm": algorithm, "classes": classes,
            "params": search.chosen, "search": search.to_dict(), "n_train": n_train_tiles,
            "n_train_rows": sum(counts.values()), "views": views, "augmentation": params.augmentation,
            "fit_seconds": round(fit_seconds, 3), "train_counts": counts,
        })
    context.log.info(f"trained {model_id} on {n_train_tiles} tiles ({views} view(s), {params.augmentation}) "
                     f"in {fit_seconds:.1f} s; chosen {search.chosen}")
    return MaterializeResult(
        metadata={
            "model_id": model_id,
            "model": MetadataValue.path(join(out, "pipeline_model")),
            "n_train": n_train_tiles,
            "n_classes": len(classes),
            "views": views,
            "augmentation": params.augmentation,
            "fit_seconds": round(fit_seconds, 3),
            "params": MetadataValue.json(search.chosen),
            "search": MetadataValue.json(search.to_dict()),
        }
    )


def _report_metadata(prefix: str, rep: ClassificationReport) -> dict[str, object]:
    return {f"{prefix}accuracy": round(rep.accuracy, 4), f"{prefix}macro_f1": round(rep.macro_f1, 4),
            f"{prefix}n": rep.n}


@asset(
    group_name="training",
    partitions_def=classifier_partitions,
    deps=["land_use_classifiers", AssetDep("tile_features", partition_mapping=by_backbone)],
    kinds={"spark"},
)
def classifier_metrics(context: AssetExecutionContext, spark: SparkResource, storage: StorageResource) -> MaterializeResult:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix on the held-out test split
    (and on the validation split, which alone is used to pick the champion). Numbers are metadata, so the UI
    plots them across runs."""
    from pyspark.ml import PipelineModel

    backbone, algorithm = _keys(context)
    layout, store = storage.layout, storage.storage
    clf_dir = layout.classifier(backbone, algorithm)
    info = read_json(store, clf_dir, "classifier.json")
    classes = info["classes"]
    model = PipelineModel.read().session(spark.session).load(store.spark_path(join(clf_dir, "pipeline_model")))
    views = int(info.get("views", 1))
    rows, _ = _rows(spark, storage, backbone, views, augment=False)
    test = evaluate(model, rows.filter("split = 'test'"), classes)
    validation = evaluate(model, rows.filter("split = 'validation'"), classes)
    png = confusion_png(test.matrix, classes, f"{backbone} + {algorithm}: test accuracy {test.accuracy:.3f}")
    out = layout.classifier_metrics(backbone, algorithm)
    payload = {
        "backbone": backbone, "algorithm": algorithm, "model_id": info["model_id"], "n_train": info["n_train"],
        "fit_seconds": info["fit_seconds"], "test": test.to_dict(), "validation": validation.to_dict(),
        "views": views, "augmentation": info.get("augmentation", "average"), "params": info.get("params", {}),
    }
    with store.atomic_dir(out) as tmp:
        write_json(storage_for(tmp), tmp, "metrics.json", payload)
        storage_for(tmp).write_bytes(join(tmp, "confusion.png"), png)
    return MaterializeResult(
        metadata={
            "model_id": info["model_id"],
            **_report_metadata("", test),
            **_report_metadata("val_", validation),
            "fit_seconds": float(info["fit_seconds"]),
            "n_train": int(info["n_train"]),
            "views": views,
            "per_class": MetadataValue.md(test.per_class_markdown()),
            "confusion_matrix": MetadataValue.md(markdown_image(png, f"confusion matrix {backbone} {algorithm}")),
        }
    )


def leaderboard_frame(storage: StorageResource, keys: list[tuple[str, str]]) -> tuple[pd.DataFrame, list[str]]:
    """One row per materialized classifier_metrics partition, plus the partitions that have none yet."""
    rows, missing = [], []
    store = storage.storage
    for backbone, algorithm in keys:
        folder = storage.layout.classifier_metrics(backbone, algorithm)
        if not store.exists(join(folder, "metrics.json")):
            missing.append(f"{backbone}|{algorithm}")
            continue
        m = read_json(store, folder, "metrics.json")
        rows.append({
            "backbone": backbone, "algorithm": algorithm, "accuracy": m["test"]["accuracy"],
            "macro_f1": m["test"]["macro_f1"], "n_train": m["n_train"], "n_test": sum(m["test"]["support"]),
            "fit_seconds": m["fit_seconds"], "views": m.get("views", 1),
            "augmentation": m.get("augmentation", "average"), "val_accuracy": m["validation"]["accuracy"],
            "val_macro_f1": m["validation"]["macro_f1"], "n_validation": sum(m["validation"]["support"]),
            "model_id": m["model_id"],
        })
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS + EXTRA_COLUMNS)
    return rank(frame).reset_index(drop=True), missing


@asset(group_name="training", deps=["classifier_metrics"], kinds={"csv"})
def model_leaderboard(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    """Every backbone x algorithm side by side: test accuracy and macro-F1, train/test sizes, fit time
    (plus the validation scores the champion is chosen on). Written as CSV and shown as a table."""
    keys = [(k.keys_by_dimension["backbone"], k.keys_by_dimension["algorithm"])
            for k in classifier_partitions.get_partition_keys()]
    frame, missing = leaderboard_frame(storage, keys)
    if frame.empty:
        raise AerialError("no classifier has metrics yet: materialize classifier_metrics for at least one partition")
    out = storage.layout.leaderboard()
    with storage.storage.atomic_dir(out) as tmp:
        storage_for(tmp).write_text(join(tmp, "leaderboard.csv"), frame.to_csv(index=False))
    context.log.info("leaderboard:\n" + frame[LEADERBOARD_COLUMNS].to_string(index=False))
    return MaterializeResult(
        metadata={
            "leaderboard": MetadataValue.md(markdown_table(frame[LEADERBOARD_COLUMNS + ["val_macro_f1"]])),
            "csv": MetadataValue.path(join(out, "leaderboard.csv")),
            "dagster/row_count": len(frame),
            "best_test_accuracy": float(frame["accuracy"].max()),
            "not_yet_trained": ", ".join(missing) or "none",
        }
    )


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Best validation macro-F1 first, then validation accuracy; remaining ties by name, so that the same
    seed always gives the same order (fit time would make it depend on the machine's load)."""
    return frame.sort_values(["val_macro_f1", "val_accuracy", "backbone", "algorithm"],
                             ascending=[False, False, True, True], kind="mergesort")


def pick_champion(frame: pd.DataFrame) -> tuple[pd.Series, str]:
    """The top of :func:`rank`. Never looks at test scores."""
    ranked = rank(frame)
    best = ranked.iloc[0]
    why = f"highest validation macro-F1 ({best['val_macro_f1']:.4f}) of {len(ranked)} models"
    if len(ranked) > 1:
        runner = ranked.iloc[1]
        why += (f"; runner-up {runner['backbone']} + {runner['algorithm']} at {runner['val_macro_f1']:.4f}"
                f" (margin {best['val_macro_f1'] - runner['val_macro_f1']:+.4f})")
    return best, why


@asset(group_name="training", deps=["model_leaderboard", "land_use_classifiers", "backbone_models"], kinds={"onnx"})
def champion_model(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    """The model that scores counties: best validation macro-F1 on the leaderboard (the test split stays a
    final report only). A self-contained bundle: the backbone's ONNX graph plus the fitted classifier."""
    layout, store = storage.layout, storage.storage
    frame = pd.read_csv(io.StringIO(store.read_text(join(layout.leaderboard(), "leaderboard.csv"))))
    best, why = pick_champion(frame)
    backbone, algorithm = str(best["backbone"]), str(best["algorithm"])
    clf_dir = layout.classifier(backbone, algorithm)
    info = read_json(store, clf_dir, "classifier.json")
    record = {
        "model_id": info["model_id"], "backbone": backbone, "algorithm": algorithm, "classes": info["classes"],
        "why": why, "views": int(info.get("views", 1)), "augmentation": info.get("augmentation", "average"),
        "params": info.get("params", {}),
        "val_macro_f1": float(best["val_macro_f1"]), "val_accuracy": float(best["val_accuracy"]),
        "test_accuracy": float(best["accuracy"]), "test_macro_f1": float(best["macro_f1"]),
        "backbone_record": read_json(store, layout.backbone_model(backbone), "backbone.json"),
    }
    out = layout.champion()
    with store.atomic_dir(out) as tmp:
        store_tmp = storage_for(tmp)
        store_tmp.copy_tree(join(layout.backbone_model(backbone), "model.onnx"), join(tmp, "model.onnx"))
        store_tmp.copy_tree(join(clf_dir, "pipeline_model"), join(tmp, "pipeline_model"))
        write_json(store_tmp, tmp, "champion.json", record)
    metrics_png = store.read_bytes(join(layout.classifier_metrics(backbone, algorithm), "confusion.png"))
    context.log.info(f"champion: {info['model_id']} ({why})")
    return MaterializeResult(
        metadata={
            "model_id": info["model_id"], "backbone": backbone, "algorithm": algorithm, "why": why,
            "views": int(info.get("views", 1)),
            "val_macro_f1": float(best["val_macro_f1"]), "test_accuracy": float(best["accuracy"]),
            "test_macro_f1": float(best["macro_f1"]),
            "confusion_matrix": MetadataValue.md(markdown_image(metrics_png, "champion confusion matrix")),
            "bundle": MetadataValue.path(out),
        }
    )


class AccuracyFloorConfig(Config):
    """The test accuracy below which the champion is flagged (a warning: the map is still made)."""

    min_accuracy: float = 0.8


@asset_check(asset=champion_model, description="Warns when the champion's test accuracy is below a configured floor.")
def champion_accuracy_floor(config: AccuracyFloorConfig, storage: StorageResource) -> AssetCheckResult:
    """A champion is only the best of what was trained: this says when even the best is not good enough for
    the maps to be trusted (the floor is run config, `min_accuracy`)."""
    record = read_json(storage.storage, storage.layout.champion(), "champion.json")
    accuracy = float(record["test_accuracy"])
    return AssetCheckResult(
        passed=accuracy >= config.min_accuracy,
        severity=AssetCheckSeverity.WARN,
        metadata={"test_accuracy": round(accuracy, 4), "min_accuracy": config.min_accuracy,
                  "model_id": record["model_id"]},
    )
