"""Group ``features``: every labelled tile as a feature vector, per backbone, computed on Spark."""


import hashlib
import io
import time

import pandas as pd
from dagster import AssetDep, AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from aerial_assets.backbones.zoo import COMBINATION, ZooEntry, zoo_entry
from aerial_assets.defs.assets._io import declared_columns, metadata_table, spark_table_schema
from aerial_assets.defs.partitions import backbone_partitions, same_partition
from aerial_assets.defs.resources import SparkResource, StorageResource
from aerial_assets.records import BackboneRecord, FeaturesSummary, ViewCount
from aerial_assets.safety import csv_files
from aerial_assets.spark import synapseml_featurization
from aerial_assets.spark.featurization import (
    FEATURE_PART_SCHEMA,
    FEATURE_SCHEMA,
    file_featurizer,
    part_concatenator,
    writing_parts,
)
from aerial_assets.spark.jobs import DEFAULT_TILES_PER_TASK, JobProgress, task_count
from aerial_assets.spark.part_files import EMPTY_PART, executor_folder, keep_reported, write_part
from aerial_assets.spark.synapseml import ONNX_MODEL_CLASS, require
from aerial_assets.storage.core import join
from aerial_assets.storage.layout import FEATURES, QUARANTINE
from aerial_assets.storage.manifest import verify, write_manifest
from aerial_assets.tables import FEATURES as FEATURES_TABLE
from aerial_assets.tables import SPLITS, TileStatus

# What the UI's column view says of features.parquet (dagster/column_schema).
FEATURE_COLUMNS = {
    "tile_id": "the catalog's tile id", "label": "the class", "split": "train, validation or test",
    "features": "the backbone's pooled features, averaged over the views", "status": "ok or quarantined",
    "view_features": "every view's features, view after view (views x D), when views > 1",
    "reason": "why a tile could not be featurized",
}


class FeaturizeConfig(Config):
    """Throughput knobs (tiles per onnxruntime call, tiles per Spark task, threads per task) and the number of
    rotated/flipped views per tile.

    Batches of 8 were measured faster than 32 here (229 vs 191 images/s for MobileNetV2 on one thread) and
    keep onnxruntime's memory arena at ~200 MiB per worker instead of ~500 MiB. ``tiles_per_task``: the job
    gets about this many tiles per task, and never fewer tasks than the cluster's slots (spark/jobs.py task_count).
    """

    batch_size: int = 8
    tiles_per_task: int = Field(default=DEFAULT_TILES_PER_TASK, ge=1)
    threads_per_task: int = 1
    views: ViewCount = Field(default=1, description="1, 4 or 8: features averaged over this many rotations/flips "
                       "of each tile (each view costs one more inference); every view is also kept for "
                       "train-time augmentation")


@asset(
    group_name="features",
    partitions_def=backbone_partitions,
    deps=["labeled_tiles", AssetDep("backbone_models", partition_mapping=same_partition)],
    kinds={"spark", "onnx", "parquet"},
    metadata={"dagster/column_schema": declared_columns(FEATURES_TABLE.fields, FEATURE_COLUMNS)},
)
def tile_features(
    context: AssetExecutionContext, config: FeaturizeConfig, spark: SparkResource, storage: StorageResource
) -> MaterializeResult:
    """Parquet of (tile id, label, split, feature vector) for every usable labelled tile, per backbone.

    Runs the backbone's ONNX graph with onnxruntime inside Spark (`mapInPandas`), one inference session
    per Python worker, or with SynapseML's ONNXModel in the JVM executors (`AERIAL_FEATURIZE_ENGINE=synapseml`);
    each task writes its own Parquet file (pyarrow, on the executor). Tiles that fail to
    decode here are quarantined with their reason.
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    backbone = context.partition_key
    jvm_engine = spark.featurize_engine == synapseml_featurization.ENGINE
    if jvm_engine:  # before any work: one line saying why, where the session lacks SynapseML
        require(spark.session, "AERIAL_FEATURIZE_ENGINE=synapseml", ONNX_MODEL_CLASS)
    entry = zoo_entry(backbone)
    layout, store = storage.layout, storage.storage
    catalog_bytes = store.read_bytes(layout.catalog())
    catalog_sha = hashlib.sha256(catalog_bytes).hexdigest()
    catalog = pd.read_parquet(io.BytesIO(catalog_bytes))
    usable = catalog[(catalog["status"] == TileStatus.OK) & catalog["split"].isin(SPLITS)][["tile_id", "uri", "label", "split"]]
    model_uri = layout.backbone_onnx(backbone)
    record = BackboneRecord.read(store, layout.backbone_model(backbone))
    # which graph computed these features: a backbone rebuilt later must not pass for the one used here
    model_sha = hashlib.sha256(store.read_bytes(model_uri)).hexdigest()
    session = spark.session
    reusable = _reusable_parts(storage, entry, catalog_sha, config.views)
    out = layout.tile_features(backbone)
    started = time.monotonic()
    with store.atomic_dir(out) as tmp:
        features_path = storage.storage.spark_path(join(tmp, FEATURES))
        folder = executor_folder(storage.storage, join(tmp, FEATURES))
        n_tasks = task_count(len(usable), spark.task_parallelism(), config.tiles_per_task)
        if reusable:
            context.log.info(f"{backbone}: concatenating the cached features of {', '.join(entry.parts)}")
            source, make_rows = _joined_parts(spark, storage, entry), part_concatenator(len(entry.parts), config.views)
        else:
            source = session.createDataFrame(usable, "tile_id string, uri string, label string, split string")
            make_rows = file_featurizer(model_uri, config.threads_per_task, config.batch_size, config.views)
        # One job, as wide as the data and the cluster: a round-robin spread of the rows; each task writes its own
        # feature file and returns one summary row with its counts (no second job reads the features to count).
        spread = source.repartition(n_tasks)
        if jvm_engine and not reusable:  # the graph runs in the JVM; the writing function averages its views
            spread = synapseml_featurization.file_inference(spread, store.read_bytes(model_uri), config.batch_size,
                                                            config.views)
            make_rows = synapseml_featurization.file_averager(config.views)
        schema = spread.mapInPandas(make_rows, FEATURE_SCHEMA).schema
        arrow_schema = to_arrow_schema(schema)
        writer = writing_parts(make_rows, folder, arrow_schema)
        with JobProgress(session, len(usable), f"featurizing with {backbone}", context.log.info, tasks=n_tasks):
            parts = spread.mapInPandas(writer, FEATURE_PART_SCHEMA).collect()
        context.log.info(f"{backbone}: {len(usable)} tiles in {n_tasks} Spark tasks")
        stray = keep_reported(folder, parts, lambda: write_part(folder, arrow_schema.empty_table(), EMPTY_PART))
        if stray:
            context.log.warning(f"{backbone}: removed {len(stray)} feature file(s) of failed task attempts")
        per_split = {s: sum(int(p[f"ok_{s}"]) for p in parts) for s in SPLITS}
        n_bad = sum(int(p["not_ok"]) for p in parts)
        bad = (session.read.parquet(features_path).filter(f"status != '{TileStatus.OK}'").select("tile_id", "reason").toPandas()
               if n_bad else pd.DataFrame({"tile_id": [], "reason": []}))
        storage.storage.write_text(join(tmp, QUARANTINE), csv_files.to_csv(bad))
        write_manifest(storage.storage, tmp, [FEATURES])  # readers check the parts against it
        elapsed = time.monotonic() - started
        FeaturesSummary(
            backbone=backbone, views=config.views, feature_dim=record.feature_dim, n_tiles=len(usable),
            seconds=round(elapsed, 2), catalog_sha256=catalog_sha, model_sha256=model_sha, run_id=context.run_id,
            reused_parts=list(entry.parts) if reusable else [],
            engine=spark.featurize_engine,
        ).write(storage.storage, tmp)
    return MaterializeResult(
        metadata={
            "features": MetadataValue.path(join(out, FEATURES)),
            "dagster/row_count": sum(per_split.values()),
            "feature_dim": record.feature_dim,
            "views": config.views,
            "engine": spark.featurize_engine,
            "reused_cached_features_of": ", ".join(entry.parts) if reusable else "none (computed)",
            **{f"n_{split}": n for split, n in per_split.items()},
            "n_quarantined": len(bad),
            "seconds": round(elapsed, 2),
            "tiles_per_second": round(len(usable) / elapsed, 1) if elapsed > 0 else 0.0,
            "quarantine": metadata_table(bad.head(50)),
            "dagster/column_schema": spark_table_schema(schema, FEATURE_COLUMNS),
        }
    )


def _reusable_parts(storage: StorageResource, entry: ZooEntry, catalog_sha: str, views: int) -> bool:
    """Whether a combination may take its parts' stored features instead of running its own graph.

    This is memoisation, not a dependency, and it is why the read is not declared to Dagster: the parts'
    features are used only when they are exactly what the combined graph computes (every part featurized from
    this very catalog, with the same views, by the part graph that is stored now, built from the same weights
    as this combination, at the same input size), so the output depends on ``labeled_tiles`` and
    ``backbone_models[<combination>]`` alone. (Dagster also refuses a dependency of a partition on other
    partitions of the same asset unless the partitions are time windows.)"""
    if entry.kind != COMBINATION or not entry.same_input_size:
        return False
    store, layout = storage.storage, storage.layout
    combined = BackboneRecord.read(store, layout.backbone_model(entry.name)).weights_sha256.split(",")
    for part, weights_sha in zip(entry.parts, combined, strict=False):
        folder = layout.tile_features(part)
        model_uri = layout.backbone_onnx(part)
        if not (FeaturesSummary.exists(store, folder) and BackboneRecord.exists(store, layout.backbone_model(part))
                and store.exists(model_uri)):
            return False
        summary = FeaturesSummary.read(store, folder)
        if summary.catalog_sha256 != catalog_sha or summary.views != views:
            return False
        if BackboneRecord.read(store, layout.backbone_model(part)).weights_sha256 != weights_sha:
            return False
        if summary.model_sha256 != hashlib.sha256(store.read_bytes(model_uri)).hexdigest():
            return False
    return len(combined) == len(entry.parts)


def _joined_parts(spark: SparkResource, storage: StorageResource, entry: ZooEntry):
    """The parts' stored features joined on tile id, one column set per part (``part_concatenator`` input)."""
    from pyspark.sql import functions as F

    joined = None
    for i, part in enumerate(entry.parts):
        verify(storage.storage, storage.layout.tile_features(part), FEATURES, f"tile_features[{part}]")
        path = storage.storage.spark_path(storage.layout.features(part))
        frame = spark.session.read.parquet(path).select(
            "tile_id", "label", "split", F.col("features").alias(f"f{i}"), F.col("view_features").alias(f"v{i}"),
            F.col("status").alias(f"s{i}"), F.col("reason").alias(f"r{i}"))
        joined = frame if joined is None else joined.join(frame.drop("label", "split"), "tile_id", "inner")
    return joined
