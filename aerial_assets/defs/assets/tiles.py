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
from pydantic import Field

from aerial_assets.defs.assets._io import markdown_table, metadata_table, table_schema
from aerial_assets.defs.resources import SparkResource, StorageResource, TrainingRastersResource, TrainingTilesResource
from aerial_assets.errors import ConfigurationError, TrainingDataError
from aerial_assets.imagery import catalog
from aerial_assets.imagery.label_map import LabelMap, apply_label_map
from aerial_assets.records import LabeledTilesSummary, LabelMapReport
from aerial_assets.safety import csv_files
from aerial_assets.spark.jobs import task_count
from aerial_assets.storage.core import join
from aerial_assets.storage.layout import CATALOG, QUARANTINE
from aerial_assets.tables import TileStatus
from aerial_assets.training.spatial_splits import (
    POSITIONS_FILE,
    Strategy,
    assign_group_splits,
    groups_of,
    parse_positions,
    training_gsd,
)


class LabeledTilesConfig(Config, catalog.SplitSettings):
    """How the labelled tiles are split (``SplitSettings``: fractions apply per class, stratified), and whether
    symlinks that lead out of the training folder are used (``follow_external_links``; by default such files are
    quarantined with a reason naming this setting, so that a catalog never silently depends on files outside its
    folder)."""

    expected_size: int = 224
    follow_external_links: bool = False
    split_strategy: Strategy = Field(
        default="auto", description="stratified (random per class), blocks (whole map blocks of block_size_m), raster "
        "(whole source rasters); auto: blocks when the folder has a tile_positions.csv, else stratified")
    block_size_m: float = Field(default=2240.0, gt=0, description="side of a spatial block, metres (10 tiles of 224 m)")



# What the UI's column view says of the catalog (dagster/column_schema).
CATALOG_DESCRIPTIONS = {
    "tile_id": "the file's path under the training folder", "uri": "where the file is read from",
    "label": "the class (after the label map)", "source_label": "the folder's class before the label map",
    "split": "train, validation, test or excluded", "status": "ok, or quarantined with a reason",
    "reason": "why a file is unusable", "sha256": "content hash of the file's bytes (duplicate and leakage checks)",
    "bytes": "file size", "width": "pixels across, as stored", "height": "pixels down, as stored",
    "mode": "the decoded image mode (RGB, L, RGBA, tiff:uint16, ...)", "notes": "conversions made to RGB 224 px",
}

@asset(group_name="tiles", kinds={"spark", "parquet"}, deps=["raster_labeled_tiles"])
def labeled_tiles(
    context: AssetExecutionContext,
    config: LabeledTilesConfig,
    spark: SparkResource,
    storage: StorageResource,
    training_tiles: TrainingTilesResource,
    training_rasters: TrainingRastersResource,
) -> MaterializeResult:
    """Catalog of the labelled tiles: one row per file with uri, label, split, bytes, width, height and status.

    Reads `AERIAL_TRAINING_TILES` (a folder `<class>/<image>` or `train/` + `test/`; the seeded demo set when
    unset). Every file is fully decoded on Spark: unreadable ones are quarantined with their reason, never
    dropped (dangling symlinks, link loops and, unless `follow_external_links`, links out of the folder too).
    The sha256 of each file's bytes is taken there as well, for the leakage and duplicate checks. Splits are
    stratified and deterministic; validation is carved from train for model selection. Class names that differ
    only by case are refused here, not at county scoring.
    """
    settings: catalog.SplitSettings = config
    if training_rasters.uri and not training_tiles.uri:  # AERIAL_TRAINING_RASTERS: raster_labeled_tiles' folder
        root, is_demo, lineage = _raster_labeled_source(storage)
    else:
        (root, is_demo), lineage = training_tiles.resolve(storage), {}
    store = storage.for_uri(root)
    if not store.exists(root):
        raise TrainingDataError(
            f"training folder {root} not found: set AERIAL_TRAINING_TILES to a folder laid out <class>/<image> "
            "(or unset it to use the built-in demo tiles)"
        )
    top_dirs = store.list_dirs(root)
    split_layout = catalog.has_split_folders(top_dirs)
    positions_uri = join(root, POSITIONS_FILE)  # tile positions for a spatial split: not a training tile
    entries = [e for e in store.list_files(root) if e.relative_path != POSITIONS_FILE]
    listed = catalog.list_tiles(entries, split_layout, root, config.follow_external_links)
    if split_layout:
        class_dirs = {s: store.list_dirs(join(root, s)) for s in top_dirs if s.lower() in ("train", "test")}
        class_dirs = {s.lower(): v for s, v in class_dirs.items()}
    else:
        class_dirs = {"": top_dirs}
    catalog.check_class_folders(class_dirs, listed)
    context.log.info(f"listed {len(listed)} files under {root}; decoding them on Spark to check them")

    candidates = listed[listed["status"] == TileStatus.OK][["tile_id", "uri"]]
    session = spark.session
    if len(candidates):
        frame = session.createDataFrame(candidates).repartition(task_count(len(candidates), spark.task_parallelism()))
        inspected = frame.mapInPandas(catalog.inspect_frames(config.expected_size), catalog.INSPECT_SCHEMA).toPandas()
        listed = catalog.merge_inspection(listed, inspected)
    catalog.check_class_folders(class_dirs, listed)
    strategy, n_groups = _split_strategy(config, split_layout, store.exists(positions_uri)), 0
    if strategy == "stratified":
        table = catalog.assign_splits(listed, settings)
    else:  # whole blocks (or rasters) to test and validation, so that neighbours never straddle the split
        positions = parse_positions(store.read_text(positions_uri), positions_uri)
        groups = groups_of(positions, strategy, config.block_size_m)
        usable = listed[listed["status"] == TileStatus.OK]
        listed = listed.copy()
        listed.loc[usable.index, "split"] = assign_group_splits(
            usable, groups, config.test_fraction, config.validation_fraction, config.seed)
        table = catalog.assign_splits(listed, settings, carve_validation=False)
        n_groups = int(usable["tile_id"].map(groups).nunique())
        context.log.info(f"spatial split ({strategy}): {n_groups} groups of whole tiles")
    catalog.check_splits(table)
    gsd_m, gsd_source = training_gsd(training_tiles.gsd_m, table, root,
                                      positions if strategy != "stratified" else
                                      (parse_positions(store.read_text(positions_uri), positions_uri)
                                       if store.exists(positions_uri) else None))
    table, mapping_report = _apply_label_map(table, training_tiles.load_label_map(storage))
    catalog.check_class_names(table)
    duplicates = catalog.find_duplicates(table).counts()

    out = storage.layout.labeled_tiles()
    quarantine = table[table["status"] == TileStatus.QUARANTINED]
    conversions = catalog.conversion_counts(table)
    counts = table[table["status"] == TileStatus.OK].groupby("split").size().to_dict()
    summary = LabeledTilesSummary(
        source=root, demo=is_demo, layout="train/test" if split_layout else "<class>/<image>", tiles=len(table),
        quarantined=len(quarantine), per_split=counts, **conversions,
        classes=sorted(table.loc[table["status"] == TileStatus.OK, "label"].unique().tolist()),
        duplicates=duplicates, split_strategy=strategy, spatial_groups=n_groups,
        block_size_m=config.block_size_m if strategy == "blocks" else None, gsd_m=gsd_m, gsd_source=gsd_source,
    )
    with storage.storage.atomic_dir(out) as tmp:
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        storage.storage.write_bytes(join(tmp, CATALOG), buf.getvalue())
        storage.storage.write_text(join(tmp, QUARANTINE), csv_files.to_csv(quarantine[["tile_id", "uri", "reason"]]))
        summary.write(storage.storage, tmp)
        mapping_report.write(storage.storage, tmp)

    return MaterializeResult(
        metadata={
            "source": MetadataValue.path(root),
            "demo_data": is_demo,
            "catalog": MetadataValue.path(join(out, CATALOG)),
            "dagster/row_count": len(table),
            "n_classes": len(summary.classes),
            "n_train": int(counts.get("train", 0)),
            "n_validation": int(counts.get("validation", 0)),
            "n_test": int(counts.get("test", 0)),
            "split_strategy": strategy,
            "gsd_m": gsd_m if gsd_m is not None else "unknown",
            "gsd_source": gsd_source,
            "spatial_groups": n_groups,
            "n_excluded_by_sample_frac": int(counts.get(catalog.EXCLUDED, 0)),
            "n_quarantined": len(quarantine),
            "n_resized": conversions["resized"],
            "n_mode_converted": conversions["mode_converted"],
            "counts_per_class_and_split": MetadataValue.md(catalog.counts_table(table)),
            "quarantine": metadata_table(quarantine[["tile_id", "reason"]].head(50)),
            "dagster/column_schema": table_schema(table, CATALOG_DESCRIPTIONS),
            "label_map": MetadataValue.md(_mapping_markdown(mapping_report)),
            "n_unmapped": mapping_report.n_unmapped_tiles,
            "unmapped_classes": ", ".join(mapping_report.unmapped) or "none",
            **duplicates,
            **lineage,
        }
    )


def _split_strategy(config: LabeledTilesConfig, split_layout: bool, has_positions: bool) -> str:
    """``auto``: blocks when the tiles' positions are known (tiles cut from rasters), else stratified."""
    strategy = config.split_strategy
    if strategy == "auto":
        return "blocks" if has_positions and not split_layout else "stratified"
    if strategy != "stratified" and split_layout:
        raise TrainingDataError(f"split_strategy {strategy!r} splits a <class>/<image> folder; this one is already "
                                "split into train/ and test/: use split_strategy stratified (or auto)")
    if strategy != "stratified" and not has_positions:
        raise TrainingDataError(f"split_strategy {strategy!r} needs the tiles' positions in {POSITIONS_FILE} at the "
                                "root of the training folder (filename, left, bottom, right, top[, source])")
    return strategy


def _apply_label_map(table: pd.DataFrame, label_map: LabelMap | None) -> tuple[pd.DataFrame, LabelMapReport]:
    """Relabel with the map (AERIAL_LABEL_MAP); without one, classes are the folder names."""
    if label_map is None:
        out = table.copy()
        out["source_label"] = out["label"]
        return out, LabelMapReport()
    mapped, report = apply_label_map(table, label_map)
    if not (mapped["status"] == TileStatus.OK).any():
        raise ConfigurationError(
            f"the label map {label_map.source} maps none of the classes found: {', '.join(sorted(report.classes))}")
    catalog.check_splits(mapped)
    return mapped, report  # report.label_map is the map's URI (its source)


def _mapping_markdown(report: LabelMapReport) -> str:
    if not report.label_map:
        return "no label map: classes are the folder names"
    rows = pd.DataFrame([{"source class": src, "target": v.target, "tiles": v.tiles}
                         for src, v in report.classes.items()])
    text = f"map: `{report.label_map}`\n\n" + markdown_table(rows)
    if report.not_found:
        text += f"\n\nin the map but no such folder: {', '.join(report.not_found)}"
    return text


@asset_check(asset=labeled_tiles, description="Warns when a class of the data is not in the label map.")
def labeled_tiles_label_map(storage: StorageResource) -> AssetCheckResult:
    """Unmapped classes are excluded from training: say which, so a typo in the map is seen, not absorbed."""
    report = LabelMapReport.read(storage.storage, storage.layout.labeled_tiles())
    return AssetCheckResult(
        passed=not report.unmapped and not report.not_found,
        severity=AssetCheckSeverity.WARN,
        metadata={"unmapped_classes": ", ".join(report.unmapped) or "none",
                  "n_unmapped_tiles": report.n_unmapped_tiles,
                  "map_classes_without_folder": ", ".join(report.not_found) or "none"},
    )


@asset_check(asset=labeled_tiles, description="Warns when files were quarantined (listed with their reason).")
def labeled_tiles_quarantine(storage: StorageResource) -> AssetCheckResult:
    """Warn, with the list, when any training file could not be used."""
    path = join(storage.layout.labeled_tiles(), QUARANTINE)
    frame = csv_files.read_csv(storage.storage.read_text(path)).fillna("")
    return AssetCheckResult(
        passed=len(frame) == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "n_quarantined": len(frame),
            "files": metadata_table(frame[["tile_id", "reason"]].head(100)),
        },
    )


def _catalog(storage: StorageResource) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.storage.read_bytes(storage.layout.catalog())))


NO_HASHES = "the catalog has no content hashes (written before they existed): re-materialize labeled_tiles"


@asset_check(asset=labeled_tiles, blocking=True,
             description="Blocks when a validation or test image is byte-identical to an image of an earlier split "
                         "(train, or validation for a test image): leakage.")
def labeled_tiles_leakage(storage: StorageResource) -> AssetCheckResult:
    """A held-out image that is also a training image is scored on what the model memorised: the test accuracy
    (or the champion choice, on validation) then means nothing. This check blocks, so nothing downstream in the
    run is computed on such a split. The copies are compared by sha256 of their bytes (the catalog's
    ``sha256``, taken on Spark while decoding). Re-encoded or resized copies are not found (not byte-identical).
    """
    table = _catalog(storage)
    if "sha256" not in table.columns:
        return AssetCheckResult(passed=False, description=NO_HASHES)
    found = catalog.find_duplicates(table)
    leaks = found.across_splits
    counts = {k: v for k, v in found.counts().items() if "identical" in k}
    description = "no validation or test image is byte-identical to an image of another split"
    if len(leaks):
        first = leaks.iloc[0]
        description = (f"{len(leaks)} held-out image(s) are byte-identical to images of an earlier split, e.g. "
                       f"{first['split']} {first['tile_id']} = {first['copy_split']} {first['copy_of']}: remove the "
                       "copies from test/ (or from the class folders), then re-materialize labeled_tiles")
    return AssetCheckResult(
        passed=len(leaks) == 0,
        description=description,
        metadata={
            **counts,
            "pairs": metadata_table(leaks[["split", "tile_id", "copy_split", "copy_of"]].head(100)),
        },
    )


@asset_check(asset=labeled_tiles,
             description="Warns about byte-identical images inside one split, and about identical bytes under two "
                         "different classes.")
def labeled_tiles_duplicates(storage: StorageResource) -> AssetCheckResult:
    """Copies inside one split weigh an image twice and inflate the counts; the same bytes under two classes is
    a label conflict the classifier cannot resolve. Neither invalidates the held-out scores (the blocking
    ``labeled_tiles_leakage`` covers copies across splits), so this only warns, with the groups."""
    table = _catalog(storage)
    if "sha256" not in table.columns:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN, description=NO_HASHES)
    found = catalog.find_duplicates(table)
    counts = {k: v for k, v in found.counts().items() if "identical" not in k}
    return AssetCheckResult(
        passed=not len(found.within_split) and not len(found.across_classes),
        severity=AssetCheckSeverity.WARN,
        metadata={
            **counts,
            "within_split": metadata_table(found.within_split[["split", "n", "tiles"]].head(100)),
            "across_classes": metadata_table(found.across_classes[["labels", "tiles"]].head(100)),
        },
    )


def _raster_labeled_source(storage: StorageResource) -> tuple[str, bool, dict[str, str]]:
    """The tiles ``raster_labeled_tiles`` wrote (an optional upstream, run first by ``make run`` when
    AERIAL_TRAINING_RASTERS is set), and the lineage back to its rasters: its summary's sha256 and theirs."""
    import hashlib
    import json

    folder = storage.layout.raster_labeled_tiles()
    summary_uri = join(folder, "summary.json")
    if not storage.storage.exists(summary_uri):
        raise TrainingDataError(f"AERIAL_TRAINING_RASTERS is set but {folder} has no tiles: materialize "
                                "raster_labeled_tiles first")
    text = storage.storage.read_text(summary_uri)
    sources = json.loads(text)["sources"]
    return join(folder, "tiles"), False, {
        "raster_labels_summary_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "training_rasters": str(sources["spec"]), "landcover_sha256": str(sources["landcover"]["sha256"]),
    }
