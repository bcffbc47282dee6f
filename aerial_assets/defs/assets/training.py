"""Group ``training``: classifiers per backbone x algorithm, their metrics, the leaderboard, the champion.

Every output here records the identity of what it was computed from (``upstream``: the sha256 of the
catalog and a fingerprint of the stored features, see :func:`features_identity`), and every step checks it
against what is stored now: a failed or skipped upstream step must never let a later step train, score or
rank on older outputs.
"""


import hashlib
import io
import json
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

from aerial_assets.defs.assets._io import metadata_table, read_json, table_schema, write_json
from aerial_assets.defs.partitions import by_backbone, classifier_partitions
from aerial_assets.defs.resources import SparkResource, StorageResource
from aerial_assets.errors import AerialError
from aerial_assets.imagery.catalog import OK
from aerial_assets.maps.rendering import confusion_png, markdown_image
from aerial_assets.storage.core import join, storage_for
from aerial_assets.training.classifiers import (
    ClassifierParams,
    class_list,
    evaluate_splits,
    fit,
    split_predictions,
    training_rows,
    with_vectors,
)
from aerial_assets.training.metrics import ClassificationReport, calibration

LEADERBOARD_COLUMNS = ["backbone", "algorithm", "accuracy", "macro_f1", "n_train", "n_test", "fit_seconds"]
EXTRA_COLUMNS = ["views", "augmentation", "val_accuracy", "val_macro_f1", "n_validation", "ece", "model_id"]
PROVENANCE_COLUMNS = ["catalog_sha256", "features_sha256"]


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


def current_catalog_sha(storage: StorageResource) -> str:
    """sha256 of the stored ``labeled_tiles/catalog.parquet`` (the same digest tile_features records)."""
    uri = join(storage.layout.labeled_tiles(), "catalog.parquet")
    if not storage.storage.exists(uri):
        raise AerialError("labeled_tiles has no catalog: materialize labeled_tiles first")
    return hashlib.sha256(storage.storage.read_bytes(uri)).hexdigest()


def features_identity(storage: StorageResource, backbone: str) -> dict[str, str]:
    """What the stored ``tile_features[backbone]`` were computed from, and a fingerprint of them.

    ``catalog_sha256`` is the one tile_features recorded. ``features_sha256`` is the sha256 of its
    ``summary.json`` and of the names and sizes of the Parquet files, all written in one atomic folder:
    Spark names every part file with a fresh id per write, so each materialization (even of identical
    features) gets its own fingerprint, and no timing coincidence in the summary can make two agree.
    """
    folder = storage.layout.tile_features(backbone)
    uri = join(folder, "summary.json")
    if not storage.storage.exists(uri):
        raise AerialError(f"tile_features[{backbone}] has no summary.json (never materialized, or written by an "
                          f"older version): materialize tile_features for partition {backbone}")
    raw = storage.storage.read_bytes(uri)
    digest = hashlib.sha256(raw)
    parquet = join(folder, "features.parquet")
    if storage.storage.exists(parquet):
        for entry in storage.storage.list_files(parquet):
            digest.update(f"\n{entry.relative_path}\t{entry.size}".encode())
    return {"catalog_sha256": str(json.loads(raw).get("catalog_sha256", "")), "features_sha256": digest.hexdigest()}


def _features_problem(identity: dict[str, str], catalog_sha: str, backbone: str) -> str:
    """'' when the features were computed from the current catalog, else why not and what to re-materialize."""
    if identity["catalog_sha256"] == catalog_sha:
        return ""
    return (f"tile_features[{backbone}] was computed from another catalog (sha256 "
            f"{identity['catalog_sha256'][:12] or 'not recorded'}, current labeled_tiles {catalog_sha[:12]}): its "
            f"last materialization failed or predates the current labeled_tiles. Re-materialize tile_features for "
            f"partition {backbone}")


def current_features(storage: StorageResource, backbone: str) -> dict[str, str]:
    """The identity of ``tile_features[backbone]``, after checking it belongs to the current catalog (raises
    naming the asset to re-materialize otherwise)."""
    identity = features_identity(storage, backbone)
    if problem := _features_problem(identity, current_catalog_sha(storage), backbone):
        raise AerialError(problem)
    return identity


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
    (sorted names) and hyperparameters are saved next to the model, with the identity of the features it was
    trained on (``upstream``). Features computed from another catalog than the current one are refused.
    """
    backbone, algorithm = _keys(context)
    params = ClassifierParams(**config.model_dump())
    params.check()
    upstream = current_features(storage, backbone)
    augment = params.augmentation == "augment"
    rows, views = _rows(spark, storage, backbone, params.views, augment)
    # spread over every task slot: the stored features may sit in a few large files (one task each)
    train = rows.filter("split = 'train'").repartition(spark.task_parallelism()).cache()
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
    if features_identity(storage, backbone) != upstream:  # replaced while fitting: the record would be a lie
        raise AerialError(f"tile_features[{backbone}] was re-materialized while {backbone}|{algorithm} was being "
                          f"trained: re-materialize land_use_classifiers for partition {backbone}|{algorithm}")
    n_train_tiles = int(sum(counts.values()) // (views if augment else 1))
    model_id = f"{backbone}.{algorithm}.{context.run_id[:8]}"
    out = storage.layout.classifier(backbone, algorithm)
    with storage.storage.atomic_dir(out) as tmp:
        model.write().overwrite().save(storage_for(tmp).spark_path(join(tmp, "pipeline_model")))
        write_json(storage_for(tmp), tmp, "classifier.json", {
            "model_id": model_id, "backbone": backbone, "algorithm": algorithm, "classes": classes,
            "params": search.chosen, "search": search.to_dict(), "n_train": n_train_tiles,
            "n_train_rows": sum(counts.values()), "views": views, "augmentation": params.augmentation,
            "fit_seconds": round(fit_seconds, 3), "train_counts": counts, "upstream": upstream,
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
            **upstream,
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
    plots them across runs. Refuses a classifier that was not trained on the current features."""
    from pyspark.ml import PipelineModel

    backbone, algorithm = _keys(context)
    layout, store = storage.layout, storage.storage
    upstream = current_features(storage, backbone)
    clf_dir = layout.classifier(backbone, algorithm)
    if not store.exists(join(clf_dir, "classifier.json")):
        raise AerialError(f"no stored classifier for {backbone}|{algorithm}: materialize land_use_classifiers for "
                          f"partition {backbone}|{algorithm}")
    info = read_json(store, clf_dir, "classifier.json")
    if info.get("upstream") != upstream:
        raise AerialError(
            f"land_use_classifiers[{backbone}|{algorithm}] ({info.get('model_id')}) was not trained on the current "
            f"tile_features[{backbone}] ({_upstream_text(info.get('upstream'))}, current {_upstream_text(upstream)}): "
            f"re-materialize land_use_classifiers for partition {backbone}|{algorithm}")
    classes = info["classes"]
    model = PipelineModel.read().session(spark.session).load(store.spark_path(join(clf_dir, "pipeline_model")))
    views = int(info.get("views", 1))
    rows, _ = _rows(spark, storage, backbone, views, augment=False)
    reports = evaluate_splits(model, rows, classes, ["test", "validation"])  # one job for both splits
    test, validation = reports["test"], reports["validation"]
    png = confusion_png(test.matrix, classes, f"{backbone} + {algorithm}: test accuracy {test.accuracy:.3f}")
    out = layout.classifier_metrics(backbone, algorithm)
    payload = {
        "backbone": backbone, "algorithm": algorithm, "model_id": info["model_id"], "n_train": info["n_train"],
        "fit_seconds": info["fit_seconds"], "test": test.to_dict(), "validation": validation.to_dict(),
        "views": views, "augmentation": info.get("augmentation", "average"), "params": info.get("params", {}),
        "upstream": upstream,
    }
    predictions = split_predictions(model, rows, classes, "test")
    catalog_rows = pd.read_parquet(io.BytesIO(store.read_bytes(join(layout.labeled_tiles(), "catalog.parquet"))),
                                   columns=["tile_id", "uri"])
    predictions = predictions.merge(catalog_rows, on="tile_id", how="left").rename(columns={"uri": "filepath"})
    predictions = predictions[["tile_id", "filepath", "label", "pred_label",
                               *[c for c in predictions.columns if c.startswith("prob_")]]]
    csv_name = f"{algorithm}_predictions_test_set.csv"
    prob_columns = [c for c in predictions.columns if c.startswith("prob_")]
    calib = calibration(predictions[prob_columns].max(axis=1).to_numpy(),
                        (predictions["label"] == predictions["pred_label"]).to_numpy())
    payload["calibration"] = calib.to_dict()
    with store.atomic_dir(out) as tmp:
        write_json(storage_for(tmp), tmp, "metrics.json", payload)
        storage_for(tmp).write_bytes(join(tmp, "confusion.png"), png)
        storage_for(tmp).write_text(join(tmp, csv_name), predictions.to_csv(index=False))
    return MaterializeResult(
        metadata={
            "model_id": info["model_id"],
            **_report_metadata("", test),
            **_report_metadata("val_", validation),
            "fit_seconds": float(info["fit_seconds"]),
            "n_train": int(info["n_train"]),
            "views": views,
            "ece": calib.ece,
            "max_calibration_gap": calib.max_gap,
            "per_class": MetadataValue.md(test.per_class_markdown()),
            "test_predictions": MetadataValue.path(join(out, csv_name)),
            "confusion_matrix": MetadataValue.md(markdown_image(png, f"confusion matrix {backbone} {algorithm}")),
        }
    )


def _upstream_text(upstream: object) -> str:
    if not isinstance(upstream, dict):
        return "no provenance recorded"
    return (f"catalog {str(upstream.get('catalog_sha256', ''))[:12]}, "
            f"features {str(upstream.get('features_sha256', ''))[:12]}")


def provenance_problem(storage: StorageResource, backbone: str, algorithm: str, catalog_sha: str,
                       features: dict[str, dict[str, str] | str]) -> str:
    """'' when the metrics of ``backbone|algorithm`` belong to the current upstream, else why not (and what to
    re-materialize): the classifier must still be stored, the metrics must be of that very model, and both
    must have been computed on the stored features, themselves computed from the current catalog.

    ``features`` caches each backbone's identity (or the reason it has none) across partitions.
    """
    layout, store = storage.layout, storage.storage
    key = f"{backbone}|{algorithm}"
    metrics = read_json(store, layout.classifier_metrics(backbone, algorithm), "metrics.json")
    clf_dir = layout.classifier(backbone, algorithm)
    if not (store.exists(join(clf_dir, "classifier.json")) and store.exists(join(clf_dir, "pipeline_model"))):
        return (f"its classifier ({metrics.get('model_id')}) is no longer stored: re-materialize "
                f"land_use_classifiers and classifier_metrics for {key}")
    info = read_json(store, clf_dir, "classifier.json")
    if metrics.get("model_id") != info.get("model_id"):
        return (f"the metrics are of {metrics.get('model_id')}, the stored classifier is {info.get('model_id')}: "
                f"re-materialize classifier_metrics for {key}")
    if backbone not in features:
        try:
            features[backbone] = features_identity(storage, backbone)
        except AerialError as exc:
            features[backbone] = str(exc)
    identity = features[backbone]
    if isinstance(identity, str):
        return identity
    if problem := _features_problem(identity, catalog_sha, backbone):
        return f"{problem}, then land_use_classifiers and classifier_metrics for {key}"
    upstream = info.get("upstream")
    if not isinstance(upstream, dict):
        return (f"trained before provenance was recorded: re-materialize land_use_classifiers and "
                f"classifier_metrics for {key}")
    if upstream.get("catalog_sha256") != catalog_sha:
        return (f"trained on another catalog ({_upstream_text(upstream)}): re-materialize land_use_classifiers "
                f"and classifier_metrics for {key}")
    if upstream != identity:
        return (f"trained on older tile_features[{backbone}] ({_upstream_text(upstream)}, current "
                f"{_upstream_text(identity)}): re-materialize land_use_classifiers and classifier_metrics for {key}")
    if metrics.get("upstream") != upstream:
        return (f"the metrics were computed on other features than the classifier's: re-materialize "
                f"classifier_metrics for {key}")
    return ""


def leaderboard_frame(storage: StorageResource, keys: list[tuple[str, str]]
                      ) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """One row per classifier_metrics partition that belongs to the current upstream; the partitions that have
    no metrics yet; and those left out, with the reason (see :func:`provenance_problem`)."""
    rows, missing, left_out = [], [], {}
    store = storage.storage
    catalog_sha = current_catalog_sha(storage)
    features: dict[str, dict[str, str] | str] = {}
    for backbone, algorithm in keys:
        folder = storage.layout.classifier_metrics(backbone, algorithm)
        if not store.exists(join(folder, "metrics.json")):
            missing.append(f"{backbone}|{algorithm}")
            continue
        if problem := provenance_problem(storage, backbone, algorithm, catalog_sha, features):
            left_out[f"{backbone}|{algorithm}"] = problem
            continue
        m = read_json(store, folder, "metrics.json")
        rows.append({
            "backbone": backbone, "algorithm": algorithm, "accuracy": m["test"]["accuracy"],
            "macro_f1": m["test"]["macro_f1"], "n_train": m["n_train"], "n_test": sum(m["test"]["support"]),
            "fit_seconds": m["fit_seconds"], "views": m.get("views", 1),
            "augmentation": m.get("augmentation", "average"), "val_accuracy": m["validation"]["accuracy"],
            "val_macro_f1": m["validation"]["macro_f1"], "n_validation": sum(m["validation"]["support"]),
            "ece": m.get("calibration", {}).get("ece"), "model_id": m["model_id"], **m["upstream"],
        })
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS + EXTRA_COLUMNS + PROVENANCE_COLUMNS)
    return rank(frame).reset_index(drop=True), missing, left_out


def _left_out_table(left_out: dict[str, str]):
    return metadata_table(pd.DataFrame([{"partition": k, "reason": v} for k, v in left_out.items()],
                                       columns=["partition", "reason"]))


@asset(group_name="training", deps=["classifier_metrics"], kinds={"csv"})
def model_leaderboard(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    """Every backbone x algorithm side by side: test accuracy and macro-F1, train/test sizes, fit time
    (plus the validation scores the champion is chosen on). Written as CSV and shown as a table.

    Only classifiers that belong to the current upstream are ranked (still stored, metrics of that very
    model, trained on the stored features of the current catalog); the others are listed in the metadata
    (``left_out``) with the reason and what to re-materialize."""
    keys = [(k.keys_by_dimension["backbone"], k.keys_by_dimension["algorithm"])
            for k in classifier_partitions.get_partition_keys()]
    frame, missing, left_out = leaderboard_frame(storage, keys)
    for key, reason in left_out.items():
        context.log.warning(f"left out of the leaderboard: {key}: {reason}")
    if frame.empty:
        detail = "; ".join(f"{k}: {v}" for k, v in left_out.items())
        raise AerialError("no classifier has metrics that belong to the current labeled_tiles and tile_features"
                          + (f" ({detail})" if detail else ": materialize classifier_metrics for at least one "
                             "partition"))
    out = storage.layout.leaderboard()
    with storage.storage.atomic_dir(out) as tmp:
        storage_for(tmp).write_text(join(tmp, "leaderboard.csv"), frame.to_csv(index=False))
    context.log.info("leaderboard:\n" + frame[LEADERBOARD_COLUMNS].to_string(index=False))
    return MaterializeResult(
        metadata={
            "leaderboard": metadata_table(frame[LEADERBOARD_COLUMNS + ["val_macro_f1", "ece"]]),
            "dagster/column_schema": table_schema(frame),
            "csv": MetadataValue.path(join(out, "leaderboard.csv")),
            "dagster/row_count": len(frame),
            "best_test_accuracy": float(frame["accuracy"].max()),
            "not_yet_trained": ", ".join(missing) or "none",
            "n_left_out": len(left_out),
            "left_out": _left_out_table(left_out),
            "catalog_sha256": str(frame["catalog_sha256"].iloc[0]),
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
    final report only). A self-contained bundle: the backbone's ONNX graph plus the fitted classifier.

    Each leaderboard row is checked again against what is stored now (the leaderboard may predate a
    retraining or a new catalog): only rows whose model is still stored and belongs to the current upstream
    can win, so ``champion.json`` always names the model it bundles; rows left out are in the metadata."""
    layout, store = storage.layout, storage.storage
    frame = pd.read_csv(io.StringIO(store.read_text(join(layout.leaderboard(), "leaderboard.csv"))),
                        dtype={"model_id": str})
    catalog_sha = current_catalog_sha(storage)
    features: dict[str, dict[str, str] | str] = {}
    left_out: dict[str, str] = {}
    for row in frame.itertuples(index=False):
        key = f"{row.backbone}|{row.algorithm}"
        if not store.exists(join(layout.classifier_metrics(row.backbone, row.algorithm), "metrics.json")):
            left_out[key] = f"its metrics are no longer stored: re-materialize classifier_metrics for {key}"
        elif problem := provenance_problem(storage, row.backbone, row.algorithm, catalog_sha, features):
            left_out[key] = problem
        elif read_json(store, layout.classifier(row.backbone, row.algorithm), "classifier.json")["model_id"] != \
                row.model_id:
            left_out[key] = (f"the leaderboard ranks {row.model_id}, no longer the stored one: re-materialize "
                             "model_leaderboard")
    for key, reason in left_out.items():
        context.log.warning(f"not a champion candidate: {key}: {reason}")
    eligible = frame[[f"{b}|{a}" not in left_out for b, a in zip(frame["backbone"], frame["algorithm"], strict=True)]]
    if eligible.empty:
        raise AerialError("no model on the leaderboard belongs to the current labeled_tiles and tile_features ("
                          + "; ".join(f"{k}: {v}" for k, v in left_out.items())
                          + "): re-materialize the classifiers, classifier_metrics and model_leaderboard")
    best, why = pick_champion(eligible)
    backbone, algorithm = str(best["backbone"]), str(best["algorithm"])
    clf_dir = layout.classifier(backbone, algorithm)
    info = read_json(store, clf_dir, "classifier.json")
    record = {
        "model_id": info["model_id"], "backbone": backbone, "algorithm": algorithm, "classes": info["classes"],
        "why": why, "views": int(info.get("views", 1)), "augmentation": info.get("augmentation", "average"),
        "params": info.get("params", {}),
        "val_macro_f1": float(best["val_macro_f1"]), "val_accuracy": float(best["val_accuracy"]),
        "test_accuracy": float(best["accuracy"]), "test_macro_f1": float(best["macro_f1"]),
        "test_ece": None if pd.isna(best["ece"]) else float(best["ece"]),
        "backbone_record": read_json(store, layout.backbone_model(backbone), "backbone.json"),
        "upstream": info["upstream"], "left_out": left_out,
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
            **({} if record["test_ece"] is None else {"test_ece": record["test_ece"]}),
            "confusion_matrix": MetadataValue.md(markdown_image(metrics_png, "champion confusion matrix")),
            "bundle": MetadataValue.path(out),
            "n_left_out": len(left_out),
            "left_out": _left_out_table(left_out),
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
