"""Group ``tiles``: the catalog of labelled training tiles."""


import io

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from aerial_assets import catalog
from aerial_assets.assets._io import markdown_table, write_json
from aerial_assets.errors import TrainingDataError
from aerial_assets.resources import SparkResource, StorageResource, TrainingTilesResource
from aerial_assets.storage import join, storage_for


class LabeledTilesConfig(Config):
    """How the labelled tiles are split. Fractions apply per class (stratified)."""

    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    sample_frac: float = 1.0
    seed: int = 0
    expected_size: int = 224


@asset(group_name="tiles", kinds={"spark", "parquet"})
def labeled_tiles(
    context: AssetExecutionContext,
    config: LabeledTilesConfig,
    spark: SparkResource,
    storage: StorageResource,
    training_tiles: TrainingTilesResource,
) -> MaterializeResult:
    """Catalog of the labelled tiles: one row per file with uri, label, split, bytes, width, height and status.

    Reads `AERIAL_TRAINING_TILES` (a folder `<class>/<image>` or `train/` + `test/`; the seeded demo set when
    unset). Every file is fully decoded on Spark: unreadable ones are quarantined with their reason, never
    dropped. Splits are stratified and deterministic; validation is carved from train for model selection.
    """
    settings = catalog.SplitSettings(config.test_fraction, config.validation_fraction, config.sample_frac, config.seed)
    settings.check()
    root, is_demo = training_tiles.resolve(storage.layout)
    store = storage_for(root)
    if not store.exists(root):
        raise TrainingDataError(
            f"training folder {root} not found: set AERIAL_TRAINING_TILES to a folder laid out <class>/<image> "
            "(or unset it to use the built-in demo tiles)"
        )
    top_dirs = store.list_dirs(root)
    split_layout = catalog.has_split_folders(top_dirs)
    listed = catalog.list_tiles(store.list_files(root), split_layout)
    if split_layout:
        class_dirs = {s: store.list_dirs(join(root, s)) for s in top_dirs if s.lower() in ("train", "test")}
        class_dirs = {s.lower(): v for s, v in class_dirs.items()}
    else:
        class_dirs = {"": top_dirs}
    catalog.check_class_folders(class_dirs, listed)
    context.log.info(f"listed {len(listed)} files under {root}; decoding them on Spark to check them")

    candidates = listed[listed["status"] == catalog.OK][["tile_id", "uri"]]
    session = spark.session
    if len(candidates):
        frame = session.createDataFrame(candidates).repartition(spark.task_parallelism() * 2)
        inspected = frame.mapInPandas(catalog.inspect_frames(config.expected_size), catalog.INSPECT_SCHEMA).toPandas()
        listed = catalog.merge_inspection(listed, inspected)
    catalog.check_class_folders(class_dirs, listed)
    table = catalog.assign_splits(listed, settings)
    catalog.check_splits(table)

    out = storage.layout.labeled_tiles()
    quarantine = table[table["status"] != catalog.OK]
    conversions = catalog.conversion_counts(table)
    counts = table[table["status"] == catalog.OK].groupby("split").size().to_dict()
    summary = {
        "source": root, "demo": is_demo, "layout": "train/test" if split_layout else "<class>/<image>",
        "tiles": len(table), "quarantined": len(quarantine), "per_split": counts, **conversions,
        "classes": sorted(table.loc[table["status"] == catalog.OK, "label"].unique().tolist()),
    }
    with storage.storage.atomic_dir(out) as tmp:
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        storage_for(tmp).write_bytes(join(tmp, "catalog.parquet"), buf.getvalue())
        storage_for(tmp).write_text(join(tmp, "quarantine.csv"), quarantine[["tile_id", "uri", "reason"]].to_csv(index=False))
        write_json(storage_for(tmp), tmp, "summary.json", summary)

    return MaterializeResult(
        metadata={
            "source": MetadataValue.path(root),
            "demo_data": is_demo,
            "catalog": MetadataValue.path(join(out, "catalog.parquet")),
            "dagster/row_count": len(table),
            "n_classes": len(summary["classes"]),
            "n_train": int(counts.get("train", 0)),
            "n_validation": int(counts.get("validation", 0)),
            "n_test": int(counts.get("test", 0)),
            "n_excluded_by_sample_frac": int(counts.get(catalog.EXCLUDED, 0)),
            "n_quarantined": len(quarantine),
            "n_resized": conversions["resized"],
            "n_mode_converted": conversions["mode_converted"],
            "counts_per_class_and_split": MetadataValue.md(catalog.counts_table(table)),
            "quarantine": MetadataValue.md(
                markdown_table(quarantine[["tile_id", "reason"]].head(50)) if len(quarantine) else "none"
            ),
        }
    )


@asset_check(asset=labeled_tiles, description="Warns when files were quarantined (listed with their reason).")
def labeled_tiles_quarantine(storage: StorageResource) -> AssetCheckResult:
    """Warn, with the list, when any training file could not be used."""
    path = join(storage.layout.labeled_tiles(), "quarantine.csv")
    frame = pd.read_csv(io.StringIO(storage.storage.read_text(path))).fillna("")
    return AssetCheckResult(
        passed=len(frame) == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "n_quarantined": len(frame),
            "files": MetadataValue.md(markdown_table(frame[["tile_id", "reason"]].head(100)) if len(frame) else "none"),
        },
    )
