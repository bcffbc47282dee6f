"""Group ``training``: classifiers per backbone x algorithm, their metrics, the leaderboard, the champion.

Every output here records the identity of what it was computed from, and every step checks it against
what is stored now (:mod:`aerial_assets.training.provenance`); the ranking is
:mod:`aerial_assets.training.leaderboard`. This module only wires them to Dagster.
"""


import io
import time
from dataclasses import dataclass

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

from aerial_assets.defs.assets._io import metadata_table, table_schema
from aerial_assets.defs.partitions import by_backbone, classifier_partitions, every_partition, same_partition
from aerial_assets.defs.resources import MlflowResource, SparkResource, StorageResource
from aerial_assets.errors import AerialError
from aerial_assets.maps.rendering import confusion_png, markdown_image
from aerial_assets.records import (
    BackboneRecord,
    ChampionRecord,
    ClassifierRecord,
    LabeledTilesSummary,
    MetricsRecord,
    OodRecord,
    ReportRecord,
)
from aerial_assets.safety import csv_files
from aerial_assets.serving.spark_models import EXPORTABLE
from aerial_assets.spark.jobs import executor_cores
from aerial_assets.spark.synapseml import LIGHTGBM_CLASS, require
from aerial_assets.storage.core import join
from aerial_assets.storage.layout import FEATURES, LEADERBOARD, MODEL, NOVELTY, PIPELINE
from aerial_assets.storage.manifest import verify, write_manifest
from aerial_assets.tables import TileStatus
from aerial_assets.tracking.champion import register_champion
from aerial_assets.tracking.classifier_runs import run_metrics, run_params, run_tags
from aerial_assets.tracking.mlflow_store import log_run, quiet
from aerial_assets.training.classifiers import (
    ALGORITHMS,
    LABEL_COL,
    SYNAPSEML_ALGORITHMS,
    ClassifierParams,
    class_list,
    evaluate_splits,
    fit,
    load_pipeline,
    split_predictions,
    training_rows,
    with_vectors,
)
from aerial_assets.training.leaderboard import LEADERBOARD_COLUMNS, leaderboard_frame, pick_champion
from aerial_assets.training.metrics import ClassificationReport, calibration
from aerial_assets.training.novelty import NoveltyModel, fit_with_threshold, novelty_scorer, ood_on_test
from aerial_assets.training.provenance import (
    catalog_sha,
    computed_views,
    current_features,
    features_identity,
    provenance_problem,
    upstream_text,
)


class ClassifierConfig(Config, ClassifierParams):
    """Hyperparameters, search grids and augmentation (``ClassifierParams``, whose fields and limits this is).
    Defaults suit CNN features; the original sample used rf_num_trees=20, rf_max_depth=5, lr_reg_param=0.01,
    lr_max_iter=10. A grid with two or more values is searched on the training split (`search`:
    train_validation_split, cross_validation or none)."""


def _keys(context: AssetExecutionContext) -> tuple[str, str]:
    """(backbone, algorithm) of a classifier partition."""
    key = context.partition_key
    if not isinstance(key, MultiPartitionKey):
        key = classifier_partitions.get_partition_key_from_str(key)
    dims = key.keys_by_dimension
    return dims["backbone"], dims["algorithm"]


def _features(spark: SparkResource, storage: StorageResource, backbone: str):
    """The stored features' usable rows, after checking the parts against what tile_features recorded."""
    verify(storage.storage, storage.layout.tile_features(backbone), FEATURES, f"tile_features[{backbone}]")
    path = storage.layout.features(backbone)
    return spark.session.read.parquet(storage.storage.spark_path(path)).filter(f"status = '{TileStatus.OK}'")


def _rows(spark: SparkResource, storage: StorageResource, backbone: str, views: int, augment: bool):
    """(rows, views used): the classifier's rows from the stored features (see training.training_rows)."""
    stored = computed_views(storage.storage, storage.layout, backbone)
    used = views or stored
    return training_rows(_features(spark, storage, backbone), used, stored, augment), used


@asset(
    group_name="training",
    partitions_def=classifier_partitions,
    deps=["labeled_tiles", AssetDep("tile_features", partition_mapping=by_backbone)],
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
    params: ClassifierParams = config
    if algorithm in SYNAPSEML_ALGORITHMS:  # before any work: one line saying why, where the session lacks SynapseML
        require(spark.session, algorithm, LIGHTGBM_CLASS)
    upstream = current_features(storage.storage, storage.layout, backbone)
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
                        spark.task_parallelism(), group_col="tile_id" if augment else None,
                        threads=executor_cores(spark.session))
    fit_seconds = time.monotonic() - started
    train.unpersist()
    ood = _sibling_ood(storage, backbone, algorithm, upstream, views, classes)
    novelty_seconds = 0.0
    if ood is None:
        ood, novelty_seconds = _fit_ood(spark, storage, backbone, rows if not augment else None, views, classes)
    else:
        context.log.info(f"out-of-distribution model reused from another classifier of {backbone} (same features, "
                         "views and classes)")
    if features_identity(storage.storage, storage.layout, backbone) != upstream:  # replaced while fitting: the record would be a lie
        raise AerialError(f"tile_features[{backbone}] was re-materialized while {backbone}|{algorithm} was being "
                          f"trained: re-materialize land_use_classifiers for partition {backbone}|{algorithm}")
    n_train_tiles = int(sum(counts.values()) // (views if augment else 1))
    model_id = f"{backbone}.{algorithm}.{context.run_id[:8]}"
    out = storage.layout.classifier(backbone, algorithm)
    with storage.storage.atomic_dir(out) as tmp:
        model.write().overwrite().save(storage.storage.spark_path(join(tmp, PIPELINE)))
        storage.storage.write_bytes(join(tmp, NOVELTY), ood.model.to_bytes())
        write_manifest(storage.storage, tmp, [PIPELINE, NOVELTY], checksums=True)
        ClassifierRecord(
            model_id=model_id, backbone=backbone, algorithm=algorithm, classes=classes, params=search.chosen,
            search=search.to_dict(), n_train=n_train_tiles, n_train_rows=sum(counts.values()), views=views,
            augmentation=params.augmentation, fit_seconds=round(fit_seconds, 3), train_counts=counts,
            upstream=upstream, ood=ood.record,
        ).write(storage.storage, tmp)
    context.log.info(f"trained {model_id} on {n_train_tiles} tiles ({views} view(s), {params.augmentation}) "
                     f"in {fit_seconds:.1f} s; chosen {search.chosen}")
    return MaterializeResult(
        metadata={
            "model_id": model_id,
            "model": MetadataValue.path(join(out, PIPELINE)),
            "n_train": n_train_tiles,
            "n_classes": len(classes),
            "views": views,
            "augmentation": params.augmentation,
            "fit_seconds": round(fit_seconds, 3),
            "ood_threshold": round(ood.record.threshold, 4),
            "ood_threshold_from": f"{ood.record.quantile:.0%} of {ood.record.n_heldout} {ood.record.heldout} tiles",
            "ood_fit_seconds": round(novelty_seconds, 3),
            "params": MetadataValue.json(search.chosen),
            "search": MetadataValue.json(search.to_dict()),
            **upstream.model_dump(),
        }
    )


@dataclass(frozen=True)
class _Ood:
    model: NoveltyModel
    record: OodRecord


def _sibling_ood(storage: StorageResource, backbone: str, algorithm: str, upstream, views: int, classes: list[str]
                 ) -> _Ood | None:
    """The out-of-distribution model another classifier of the same backbone already fitted on the same features
    (same fingerprint, views and classes): the model is a function of those alone, so it is reused, not refitted
    (one d x d pass per backbone instead of one per algorithm)."""
    store, layout = storage.storage, storage.layout
    for other in ALGORITHMS:
        folder = layout.classifier(backbone, other)
        if other == algorithm or not ClassifierRecord.exists(store, folder):
            continue
        info = ClassifierRecord.read(store, folder)
        if info.ood is None or (info.upstream, info.views, info.classes) != (upstream, views, classes):
            continue
        try:
            verify(store, folder, NOVELTY, f"land_use_classifiers[{backbone}|{other}]")
            return _Ood(NoveltyModel.from_bytes(store.read_bytes(join(folder, NOVELTY))), info.ood)
        except AerialError:  # damaged or being replaced: fit anew
            continue
    return None


def _fit_ood(spark: SparkResource, storage: StorageResource, backbone: str, rows, views: int, classes: list[str]
             ) -> tuple[_Ood, float]:
    """The out-of-distribution model of the classifier's training tiles (:mod:`aerial_assets.training.novelty`):
    one row per tile, its views averaged as scoring averages them (``rows``: those rows when the classifier
    trained on them, None to read them); threshold on the validation split."""
    started = time.monotonic()
    if rows is None:
        rows, _ = _rows(spark, storage, backbone, views, augment=False)
    indexed = with_vectors(rows, classes)
    model = fit_with_threshold(indexed.filter("split = 'train'"), indexed.filter("split = 'validation'"),
                               len(classes), LABEL_COL)
    tiles = LabeledTilesSummary.read(storage.storage, storage.layout.labeled_tiles())
    record = OodRecord(threshold=model.threshold, quantile=model.quantile, heldout=model.heldout,
                       n_heldout=model.n_heldout, n_fit=model.n_fit, shrinkage=round(model.shrinkage, 6),
                       rank=len(model.variances), training_gsd_m=tiles.gsd_m, training_gsd_source=tiles.gsd_source)
    return _Ood(model, record), time.monotonic() - started


def _stored_novelty(storage: StorageResource, info: ClassifierRecord) -> NoveltyModel | None:
    """The classifier's out-of-distribution model, checked against its manifest; None for a classifier trained
    before the model existed (its predictions then carry no score, and say so)."""
    if info.ood is None:
        return None
    folder = storage.layout.classifier(info.backbone, info.algorithm)
    verify(storage.storage, folder, NOVELTY, f"land_use_classifiers[{info.backbone}|{info.algorithm}]")
    return NoveltyModel.from_bytes(storage.storage.read_bytes(join(folder, NOVELTY)))


def _report_metadata(prefix: str, rep: ClassificationReport) -> dict[str, object]:
    return {f"{prefix}accuracy": round(rep.accuracy, 4), f"{prefix}macro_f1": round(rep.macro_f1, 4),
            f"{prefix}n": rep.n}


@asset(
    group_name="training",
    partitions_def=classifier_partitions,
    deps=["labeled_tiles", AssetDep("land_use_classifiers", partition_mapping=same_partition),
          AssetDep("tile_features", partition_mapping=by_backbone)],
    kinds={"spark"},
)
def classifier_metrics(context: AssetExecutionContext, spark: SparkResource, storage: StorageResource,
                       mlflow: MlflowResource) -> MaterializeResult:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix on the held-out test split
    (and on the validation split, which alone is used to pick the champion). Numbers are metadata, so the UI
    plots them across runs. Refuses a classifier that was not trained on the current features.

    Each materialization is also a new MLflow run (params, the same metrics, the confusion matrix, the per-class
    report and the test predictions as artifacts), linked from the metadata (``mlflow_run``)."""
    backbone, algorithm = _keys(context)
    layout, store = storage.layout, storage.storage
    upstream = current_features(store, layout, backbone)
    clf_dir = layout.classifier(backbone, algorithm)
    if not ClassifierRecord.exists(store, clf_dir):
        raise AerialError(f"no stored classifier for {backbone}|{algorithm}: materialize land_use_classifiers for "
                          f"partition {backbone}|{algorithm}")
    info = ClassifierRecord.read(store, clf_dir)
    if info.upstream != upstream:
        raise AerialError(
            f"land_use_classifiers[{backbone}|{algorithm}] ({info.model_id}) was not trained on the current "
            f"tile_features[{backbone}] ({upstream_text(info.upstream)}, current {upstream_text(upstream)}): "
            f"re-materialize land_use_classifiers for partition {backbone}|{algorithm}")
    classes = info.classes
    verify(store, clf_dir, PIPELINE, f"land_use_classifiers[{backbone}|{algorithm}]")
    model = load_pipeline(spark.session, store.spark_path(layout.classifier_pipeline(backbone, algorithm)), algorithm)
    views = info.views
    rows, _ = _rows(spark, storage, backbone, views, augment=False)
    reports = evaluate_splits(model, rows, classes, ["test", "validation"])  # one job for both splits
    test, validation = reports["test"], reports["validation"]
    png = confusion_png(test.matrix, classes, f"{backbone} + {algorithm}: test accuracy {test.accuracy:.3f}")
    out = layout.classifier_metrics(backbone, algorithm)
    from pyspark.sql import functions as F

    novelty = _stored_novelty(storage, info)
    scored_rows = rows if novelty is None else rows.withColumn("ood_score", novelty_scorer(novelty)(F.col("features")))
    predictions = split_predictions(model, scored_rows, classes, "test", extra=[] if novelty is None else ["ood_score"])
    ood_test = None
    if novelty is not None:
        predictions["in_distribution"] = predictions["ood_score"] <= novelty.threshold
        ood_test = ood_on_test(predictions, novelty.threshold)
    catalog_rows = pd.read_parquet(io.BytesIO(store.read_bytes(layout.catalog())),
                                   columns=["tile_id", "uri"])
    predictions = predictions.merge(catalog_rows, on="tile_id", how="left").rename(columns={"uri": "filepath"})
    predictions = predictions[["tile_id", "filepath", "label", "pred_label",
                               *[c for c in predictions.columns if c.startswith("prob_")],
                               *([] if novelty is None else ["ood_score", "in_distribution"])]]
    csv_name = f"{algorithm}_predictions_test_set.csv"
    prob_columns = [c for c in predictions.columns if c.startswith("prob_")]
    calib = calibration(predictions[prob_columns].max(axis=1).to_numpy(),
                        (predictions["label"] == predictions["pred_label"]).to_numpy())
    record = MetricsRecord(
        backbone=backbone, algorithm=algorithm, model_id=info.model_id, n_train=info.n_train,
        fit_seconds=info.fit_seconds, test=ReportRecord(**test.to_dict()),
        validation=ReportRecord(**validation.to_dict()), views=views, augmentation=info.augmentation,
        params=info.params, upstream=upstream, calibration=calib.to_dict(), ood=ood_test,
    )
    csv_text = csv_files.to_csv(predictions)
    run = None
    if (target := mlflow.target()) is not None:  # before the outputs: the record names its run
        with quiet():
            run = log_run(target, run_name=f"{backbone}|{algorithm}", params=run_params(info),
                          metrics=run_metrics(record),
                          tags=run_tags(record, context.run_id, "classifier_metrics", f"{backbone}|{algorithm}"),
                          files={"confusion.png": png, csv_name: csv_text.encode(),
                                 "metrics.json": record.to_json().encode(),
                                 "per_class.md": test.per_class_markdown().encode()})
        record = record.model_copy(update={"mlflow_run_id": run.run_id})
        context.log.info(f"MLflow run {run.run_id} in experiment {target.experiment}: {run.url}")
    with store.atomic_dir(out) as tmp:
        record.write(storage.storage, tmp)
        storage.storage.write_bytes(join(tmp, "confusion.png"), png)
        storage.storage.write_text(join(tmp, csv_name), csv_text)
    return MaterializeResult(
        metadata={
            "model_id": info.model_id,
            **_report_metadata("", test),
            **_report_metadata("val_", validation),
            "fit_seconds": float(info.fit_seconds),
            "n_train": info.n_train,
            "views": views,
            "ece": calib.ece,
            "max_calibration_gap": calib.max_gap,
            **({} if ood_test is None else {
                "test_ood_share": round(ood_test.share_out, 4), "test_n_out_of_distribution": ood_test.n_out,
                **{f"test_accuracy_{side}_distribution": round(v, 4) for side, v in
                   (("in", ood_test.accuracy_in), ("out_of", ood_test.accuracy_out)) if v is not None}}),
            "per_class": MetadataValue.md(test.per_class_markdown()),
            "test_predictions": MetadataValue.path(join(out, csv_name)),
            "confusion_matrix": MetadataValue.md(markdown_image(png, f"confusion matrix {backbone} {algorithm}")),
            **({} if run is None else {"mlflow_run_id": run.run_id, "mlflow_run": MetadataValue.url(run.url)}),
        }
    )


def _left_out_table(left_out: dict[str, str]):
    return metadata_table(pd.DataFrame([{"partition": k, "reason": v} for k, v in left_out.items()],
                                       columns=["partition", "reason"]))


@asset(group_name="training", kinds={"csv"},
       # provenance: each row's classifier, and the features and catalog it must have been trained on
       deps=["labeled_tiles", AssetDep("classifier_metrics", partition_mapping=every_partition),
             AssetDep("land_use_classifiers", partition_mapping=every_partition),
             AssetDep("tile_features", partition_mapping=every_partition)])
def model_leaderboard(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    """Every backbone x algorithm side by side: test accuracy and macro-F1, train/test sizes, fit time
    (plus the validation scores the champion is chosen on). Written as CSV and shown as a table.

    Only classifiers that belong to the current upstream are ranked (still stored, metrics of that very
    model, trained on the stored features of the current catalog); the others are listed in the metadata
    (``left_out``) with the reason and what to re-materialize."""
    keys = [(k.keys_by_dimension["backbone"], k.keys_by_dimension["algorithm"])
            for k in classifier_partitions.get_partition_keys()]
    frame, missing, left_out = leaderboard_frame(storage.storage, storage.layout, keys)
    for key, reason in left_out.items():
        context.log.warning(f"left out of the leaderboard: {key}: {reason}")
    if frame.empty:
        detail = "; ".join(f"{k}: {v}" for k, v in left_out.items())
        raise AerialError("no classifier has metrics that belong to the current labeled_tiles and tile_features"
                          + (f" ({detail})" if detail else ": materialize classifier_metrics for at least one "
                             "partition"))
    out = storage.layout.leaderboard()
    with storage.storage.atomic_dir(out) as tmp:
        storage.storage.write_text(join(tmp, LEADERBOARD), csv_files.to_csv(frame))
    context.log.info("leaderboard:\n" + frame[LEADERBOARD_COLUMNS].to_string(index=False))
    return MaterializeResult(
        metadata={
            "leaderboard": metadata_table(frame[LEADERBOARD_COLUMNS + ["val_macro_f1", "ece"]]),
            "dagster/column_schema": table_schema(frame),
            "csv": MetadataValue.path(join(out, LEADERBOARD)),
            "dagster/row_count": len(frame),
            "best_test_accuracy": float(frame["accuracy"].max()),
            "not_yet_trained": ", ".join(missing) or "none",
            "n_left_out": len(left_out),
            "left_out": _left_out_table(left_out),
            "catalog_sha256": str(frame["catalog_sha256"].iloc[0]),
        }
    )


@asset(group_name="training", kinds={"onnx"},
       deps=["labeled_tiles", "model_leaderboard", AssetDep("classifier_metrics", partition_mapping=every_partition),
             AssetDep("land_use_classifiers", partition_mapping=every_partition),
             AssetDep("tile_features", partition_mapping=every_partition),
             AssetDep("backbone_models", partition_mapping=every_partition)])
def champion_model(context: AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
                   ) -> MaterializeResult:
    """The model that scores counties: best validation macro-F1 on the leaderboard (the test split stays a
    final report only). A self-contained bundle: the backbone's ONNX graph plus the fitted classifier.

    Each leaderboard row is checked again against what is stored now (the leaderboard may predate a
    retraining or a new catalog): only rows whose model is still stored and belongs to the current upstream
    can win, so ``champion.json`` always names the model it bundles; rows left out are in the metadata.

    With MLflow on, the champion is also registered (``AERIAL_MLFLOW_MODEL_NAME``, alias ``champion``) as a pyfunc
    that needs neither Spark nor Dagster: encoded images in, label and class probabilities out."""
    layout, store = storage.layout, storage.storage
    frame = csv_files.read_csv(store.read_text(layout.leaderboard_csv()), dtype={"model_id": str})
    catalog = catalog_sha(store, layout)
    features: dict = {}
    left_out: dict[str, str] = {}
    for row in frame.itertuples(index=False):
        key = f"{row.backbone}|{row.algorithm}"
        if not MetricsRecord.exists(store, layout.classifier_metrics(row.backbone, row.algorithm)):
            left_out[key] = f"its metrics are no longer stored: re-materialize classifier_metrics for {key}"
        elif problem := provenance_problem(store, layout, row.backbone, row.algorithm, catalog, features):
            left_out[key] = problem
        elif ClassifierRecord.read(store, layout.classifier(row.backbone, row.algorithm)).model_id != row.model_id:
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
    info = ClassifierRecord.read(store, clf_dir)
    record = ChampionRecord(
        model_id=info.model_id, backbone=backbone, algorithm=algorithm, classes=info.classes, why=why,
        views=info.views, augmentation=info.augmentation, params=info.params,
        val_macro_f1=float(best["val_macro_f1"]), val_accuracy=float(best["val_accuracy"]),
        test_accuracy=float(best["accuracy"]), test_macro_f1=float(best["macro_f1"]),
        test_ece=None if pd.isna(best["ece"]) else float(best["ece"]),
        backbone_record=BackboneRecord.read(store, layout.backbone_model(backbone)),
        upstream=info.upstream, left_out=left_out, ood=info.ood,
    )
    out = layout.champion()
    verify(store, clf_dir, PIPELINE, f"land_use_classifiers[{backbone}|{algorithm}]")  # never bundle a broken copy
    registered, mlflow_note = _register(context, mlflow, storage, record)
    if registered is not None:
        record = record.model_copy(update={"mlflow_model": f"{registered.name}/{registered.version}"})
    with store.atomic_dir(out) as tmp:
        store_tmp = storage.storage
        store_tmp.copy_tree(layout.backbone_onnx(backbone), join(tmp, MODEL))
        store_tmp.copy_tree(layout.classifier_pipeline(backbone, algorithm), join(tmp, PIPELINE))
        bundled = [MODEL, PIPELINE]
        if info.ood is not None:
            verify(store, clf_dir, NOVELTY, f"land_use_classifiers[{backbone}|{algorithm}]")
            store_tmp.copy_tree(join(clf_dir, NOVELTY), join(tmp, NOVELTY))
            bundled.append(NOVELTY)
        write_manifest(store_tmp, tmp, bundled, checksums=True)
        record.write(store_tmp, tmp)
    metrics_png = store.read_bytes(join(layout.classifier_metrics(backbone, algorithm), "confusion.png"))
    context.log.info(f"champion: {info.model_id} ({why})")
    return MaterializeResult(
        metadata={
            "model_id": info.model_id, "backbone": backbone, "algorithm": algorithm, "why": why,
            "views": info.views,
            "val_macro_f1": float(best["val_macro_f1"]), "test_accuracy": float(best["accuracy"]),
            "test_macro_f1": float(best["macro_f1"]),
            **({} if record.test_ece is None else {"test_ece": record.test_ece}),
            "confusion_matrix": MetadataValue.md(markdown_image(metrics_png, "champion confusion matrix")),
            "bundle": MetadataValue.path(out),
            "n_left_out": len(left_out),
            "left_out": _left_out_table(left_out),
            **mlflow_note,
        }
    )


def _register(context: AssetExecutionContext, mlflow: MlflowResource, storage: StorageResource,
              record: ChampionRecord):
    """Register the champion in MLflow, when MLflow is on and the algorithm can be served without Spark; the
    metadata says which version, or why none."""
    target = mlflow.target()
    if target is None:
        return None, {}
    if record.algorithm not in EXPORTABLE:
        why = (f"not registered: a {record.algorithm} champion cannot be exported without Spark (served algorithms: "
               f"{', '.join(EXPORTABLE)})")
        context.log.warning(f"MLflow: {why}")
        return None, {"mlflow_model": why}
    layout, store = storage.layout, storage.storage
    tests = csv_files.read_csv(store.read_text(join(layout.classifier_metrics(record.backbone, record.algorithm),
                                                    f"{record.algorithm}_predictions_test_set.csv")))
    examples = [storage.for_uri(uri).read_bytes(uri) for uri in tests["filepath"].dropna().head(2)]
    with quiet():
        registered = register_champion(target, store, layout.backbone_onnx(record.backbone),
                                       layout.classifier_pipeline(record.backbone, record.algorithm), record,
                                       examples, {"dagster.run_id": context.run_id, "dagster.asset": "champion_model"})
    context.log.info(f"MLflow: registered {registered.name} version {registered.version} (alias champion)")
    return registered, {"mlflow_model": f"{registered.name}/{registered.version}",
                        "mlflow_run": MetadataValue.url(registered.run.url)}


class AccuracyFloorConfig(Config):
    """The test accuracy below which the champion is flagged (a warning: the map is still made)."""

    min_accuracy: float = 0.8


@asset_check(asset=champion_model, description="Warns when the champion's test accuracy is below a configured floor.")
def champion_accuracy_floor(config: AccuracyFloorConfig, storage: StorageResource) -> AssetCheckResult:
    """A champion is only the best of what was trained: this says when even the best is not good enough for
    the maps to be trusted (the floor is run config, `min_accuracy`)."""
    record = ChampionRecord.read(storage.storage, storage.layout.champion())
    accuracy = record.test_accuracy
    return AssetCheckResult(
        passed=accuracy >= config.min_accuracy,
        severity=AssetCheckSeverity.WARN,
        metadata={"test_accuracy": round(accuracy, 4), "min_accuracy": config.min_accuracy,
                  "model_id": record.model_id},
    )
