"""Group ``maps``: the predicted land use of a county as a Cloud-Optimized GeoTIFF and a PNG, and the change
between two vintages of a county."""

import os
import tempfile

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetDep,
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from aerial_assets.defs.assets._io import metadata_table, no_scored_tiles, run_per_county
from aerial_assets.defs.partitions import county_partitions, same_partition
from aerial_assets.defs.resources import CountyRegistryResource, SparkResource, StorageResource
from aerial_assets.errors import CountyError
from aerial_assets.imagery.rasters import MapGrid, write_class_geotiff
from aerial_assets.maps.change import UNCHANGED, choose_baseline, stale_change_inputs, transitions
from aerial_assets.maps.map_cells import frames_of, grid_of, paint, with_cells
from aerial_assets.maps.rendering import (
    LOW_CONFIDENCE,
    OUT_OF_DISTRIBUTION,
    TRUSTED,
    change_png,
    class_colours,
    hex_to_rgb,
    is_geographic_crs,
    map_png,
    markdown_image,
)
from aerial_assets.maps.spatial import plurality_smooth
from aerial_assets.maps.stac import raster_item, write_item
from aerial_assets.maps.web_map import DEFAULT_MAX_TILES, MapLayer, tiles_html
from aerial_assets.records import ChangeSummary, LandUseMapSummary, PredictionsSummary
from aerial_assets.safety import csv_files
from aerial_assets.storage.core import Storage, join
from aerial_assets.storage.layout import PREDICTIONS
from aerial_assets.storage.manifest import verify
from aerial_assets.tables import TileStatus

NODATA = 255


class LandUseMapConfig(Config):
    """``smoothing``: a 3 x 3 plurality vote over neighbouring tiles (centre weighted), off by default (the
    interactive map always shows each tile's own prediction and probabilities). ``interactive_max_tiles``: the
    largest county drawn as an interactive HTML map (the page holds every tile: ~80 bytes each with six
    classes)."""

    smoothing: bool = False
    interactive_max_tiles: int = Field(default=DEFAULT_MAX_TILES, ge=0)
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0, description=(
        "tiles whose predicted class has a probability below this are marked low confidence on the maps"))


LONLAT = ["min_lon", "min_lat", "max_lon", "max_lat"]


def _scored(spark: SparkResource, storage: StorageResource, key: str, extra: tuple[str, ...] = ()):
    """The scored tiles of county ``key`` (a Spark DataFrame: read on the executors, never collected), after
    checking the parts against what county_predictions recorded."""
    layout, store = storage.layout, storage.storage
    verify(store, layout.county_predictions(key), PREDICTIONS, f"county_predictions[{key}]")
    path = store.spark_path(layout.predictions(key))
    return (spark.session.read.parquet(path).filter(f"status = '{TileStatus.OK}'")
            .select("tile_id", "left", "right", "bottom", "top", "predicted_index", *LONLAT, *extra))


def _has_ood(spark: SparkResource, storage: StorageResource, key: str) -> bool:
    """Whether the county's predictions carry out-of-distribution flags (predictions of a model trained before
    they existed do not). Reads the Parquet footers only."""
    path = storage.storage.spark_path(storage.layout.predictions(key))
    return "in_distribution" in spark.session.read.parquet(path).columns


def _trust(scored, classes: list[str], min_confidence: float, ood: bool):
    """``scored`` with a ``trust`` column: 2 out of distribution, 1 low confidence (the champion's top class
    probability below ``min_confidence``), 0 trusted (the values of ``land_use_trust.tif``)."""
    from pyspark.sql import functions as F

    probs = [F.col(f"prob_{c}") for c in classes]
    top = F.greatest(*probs) if len(probs) > 1 else probs[0]
    trust = F.when(top < F.lit(min_confidence), F.lit(LOW_CONFIDENCE)).otherwise(F.lit(TRUSTED))
    if ood:
        trust = F.when(F.col("in_distribution") == F.lit(False), F.lit(OUT_OF_DISTRIBUTION)).otherwise(trust)
    return scored.withColumn("trust", trust.cast("int"))


TRUST_CLASSES = ["trusted", "low confidence", "out of distribution"]
TRUST_COLOURS = [(26, 150, 65), (253, 174, 97), (64, 64, 64)]


def _html_map(tmp_store: Storage, uri: str, final_uri: str, frames, layer: MapLayer, n_tiles: int,
              max_tiles: int):
    """Write the interactive map unless the county has more than ``max_tiles`` tiles. The metadata entry: the
    page's path (``final_uri``, where the commit puts it), or why there is none."""
    if n_tiles > max_tiles:
        return (f"not written: {n_tiles} tiles is more than interactive_max_tiles={max_tiles} (the page holds "
                "every tile); raise it, or use the GeoTIFF")
    html, _ = tiles_html(frames, layer, max_tiles)
    tmp_store.write_text(uri, html)
    return MetadataValue.path(final_uri)


def _write_geotiff(store: Storage, uri: str, grid: np.ndarray, grid_def: MapGrid, crs: str, colours,
                   classes: list[str], description: str, extra: dict[int, str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        tif = os.path.join(scratch, "map.tif")
        write_class_geotiff(tif, grid, grid_def, crs, colours, NODATA, classes, description, extra)
        with open(tif, "rb") as handle:
            store.write_bytes(uri, handle.read())


@asset(
    group_name="maps",
    partitions_def=county_partitions,
    deps=[AssetDep("county_predictions", partition_mapping=same_partition)],
    backfill_policy=BackfillPolicy.single_run(),
    kinds={"geotiff", "png"},
)
def county_land_use_map(
    context: AssetExecutionContext, config: LandUseMapConfig, spark: SparkResource, storage: StorageResource
):
    """A county's predicted land use: a single-band Cloud-Optimized GeoTIFF of class ids (one pixel per tile, in
    the county's CRS, with a colour table) and a PNG map with legend, title and scale bar; class shares in
    metadata. Optional 3 x 3 plurality smoothing, with the number of tiles it changed."""
    layout, store = storage.layout, storage.storage

    def work(key: str) -> dict:
        summary = PredictionsSummary.read(store, layout.county_predictions(key))
        classes, model_id, crs = summary.classes, summary.model_id, summary.crs
        scored = _scored(spark, storage, key)
        grid_def = grid_of(scored)
        if grid_def is None:
            raise no_scored_tiles(storage, key)
        raw = paint(with_cells(scored, grid_def), grid_def, "predicted_index", NODATA)
        grid = plurality_smooth(raw, len(classes), NODATA) if config.smoothing else raw
        ood = _has_ood(spark, storage, key)
        probs = tuple(f"prob_{c}" for c in classes)
        flagged = _trust(_scored(spark, storage, key, probs + (("in_distribution",) if ood else ())), classes,
                         config.min_confidence, ood)
        trust = paint(with_cells(flagged, grid_def), grid_def, "trust", NODATA)
        trust_counts = {name: int((trust == value).sum()) for value, name in enumerate(TRUST_CLASSES)}
        changed = int((grid != raw).sum())
        colours = class_colours(classes)
        title = f"Predicted land use: {key} (model {model_id}){', smoothed 3x3' if config.smoothing else ''}"
        png = map_png(grid, classes, title, (grid_def.cell_x, grid_def.cell_y), grid_def.extent, crs, NODATA, trust)
        counts = np.bincount(grid[grid != NODATA].ravel(), minlength=len(classes))
        shares = pd.DataFrame({"class": classes, "tiles": counts.astype(int),
                               "share_%": np.round(100 * counts / max(counts.sum(), 1), 1)})
        out = layout.county_map(key)
        with store.atomic_dir(out) as tmp:
            tmp_store = storage.storage
            _write_geotiff(tmp_store, join(tmp, "land_use.tif"), grid, grid_def, crs,
                           [hex_to_rgb(c) for c in colours], classes, f"predicted land-use class ({model_id})")
            _write_geotiff(tmp_store, join(tmp, "land_use_trust.tif"), trust, grid_def, crs, TRUST_COLOURS,
                           TRUST_CLASSES, f"trust in the land-use class: 0 trusted, 1 low confidence (top "
                           f"probability < {config.min_confidence:g}), 2 out of distribution ({model_id})")
            tmp_store.write_bytes(join(tmp, "land_use.png"), png)
            tiles = flagged.withColumnRenamed("predicted_index", "value")
            layer = MapLayer(f"Predicted land use: {key}", classes, colours, probs, model_id,
                             trust=(f"low confidence (< {config.min_confidence:g})",
                                    "out of distribution: not to be trusted"))
            html_entry = _html_map(tmp_store, join(tmp, "land_use.html"), join(out, "land_use.html"),
                                   frames_of(tiles, [*LONLAT, "value", *probs, "trust"]), layer, summary.n_tiles,
                                   config.interactive_max_tiles)
            write_item(raster_item(join(tmp, "land_use.tif"), f"{key}-land_use", summary.year,
                                   {"aerial:county": key, "aerial:model_id": model_id,
                                    "aerial:smoothing": config.smoothing},
                                   classes, overview_png=join(tmp, "land_use.png")),
                       join(tmp, "land_use.stac.json"))
            LandUseMapSummary(
                county=key, model_id=model_id, crs=crs, classes=classes, grid=[grid_def.rows, grid_def.cols],
                cell_x=grid_def.cell_x, cell_y=grid_def.cell_y,
                cell_m=grid_def.cell_x if grid_def.square and not is_geographic_crs(crs) else None,
                counts=counts.tolist(), smoothing=config.smoothing, tiles_changed_by_smoothing=changed,
                min_confidence=config.min_confidence, trust_counts=trust_counts if ood else
                {k: v for k, v in trust_counts.items() if k != "out of distribution"},
            ).write(tmp_store, tmp)
        context.log.info(f"map of {key}: {join(out, 'land_use.png')}")
        return {
            "map_png": MetadataValue.path(join(out, "land_use.png")),
            "map_geotiff": MetadataValue.path(join(out, "land_use.tif")),
            "stac_item": MetadataValue.path(join(out, "land_use.stac.json")),
            "map_html": html_entry,
            "map": MetadataValue.md(markdown_image(png, f"land use map of {key}")),
            "class_shares": metadata_table(shares, 1),
            "model_id": model_id,
            "crs": crs,
            "grid_rows": grid_def.rows,
            "grid_cols": grid_def.cols,
            "smoothing": config.smoothing,
            "tiles_changed_by_smoothing": changed,
            "map_trust_geotiff": MetadataValue.path(join(out, "land_use_trust.tif")),
            "tiles_low_confidence": trust_counts["low confidence"],
            "tiles_out_of_distribution": trust_counts["out of distribution"] if ood else "unknown: no scores",
        }

    return run_per_county(context, work)


class LandUseChangeConfig(Config):
    """``baseline``: the partition key of the earlier vintage; empty = the latest earlier vintage registered."""

    baseline: str = ""
    interactive_max_tiles: int = Field(default=DEFAULT_MAX_TILES, ge=0)


@asset(
    group_name="maps",
    partitions_def=county_partitions,
    # The baseline vintage is read too; see county_land_use_change_inputs_current for why it is not declared.
    deps=[AssetDep("county_predictions", partition_mapping=same_partition)],
    kinds={"parquet", "geotiff", "png"},
)
def county_land_use_change(
    context: AssetExecutionContext,
    config: LandUseChangeConfig,
    spark: SparkResource,
    storage: StorageResource,
    counties: CountyRegistryResource,
):
    """Land-use change of a county vintage (partition `area@year`) since an earlier vintage of the same area:
    per-tile transitions (for example tiles that became Developed), the transition matrix, and a change map
    (PNG and GeoTIFF: the new class where a tile changed, 254 where it did not)."""
    layout, store = storage.layout, storage.storage
    registry = counties.load(storage)

    def work(key: str) -> dict:
        county = counties.get(storage, key)
        base = choose_baseline(registry, county, config.baseline)
        if not PredictionsSummary.exists(store, layout.county_predictions(base)):
            raise CountyError(f"baseline {base} of {key} has no predictions yet: materialize county_predictions[{base}]")
        before_summary = PredictionsSummary.read(store, layout.county_predictions(base))
        after_summary = PredictionsSummary.read(store, layout.county_predictions(key))
        classes = after_summary.classes
        if before_summary.classes != classes:
            raise CountyError(f"{base} and {key} were scored by models with different classes; re-score {base}")
        ood = _has_ood(spark, storage, base) and _has_ood(spark, storage, key)
        flags = ("in_distribution",) if ood else ()
        before = _scored(spark, storage, base, flags)
        after = _scored(spark, storage, key, flags)
        change = transitions(before, after, classes, base, key)
        pairs, grid_def, matrix = change.pairs, change.grid, change.matrix
        n_pairs, n_changed = change.n_pairs, change.n_changed
        grid = paint(pairs, grid_def, "value", NODATA)
        untrusted = (paint(pairs.filter("out_of_distribution"), grid_def, "value", NODATA) != NODATA) if ood else None
        n_changed_ood = int((untrusted & (grid != UNCHANGED) & (grid != NODATA)).sum()) if ood else None
        colours = class_colours(classes)
        title = f"Land-use change {base} -> {key} ({n_changed} of {n_pairs} tiles changed)"
        crs = after_summary.crs
        png = change_png(grid, classes, title, grid_def.extent, crs, UNCHANGED, NODATA, untrusted)
        table = pd.DataFrame(matrix, index=[f"from {c}" for c in classes], columns=classes)
        became = change.became(classes)
        out = layout.county_change(key)
        with store.atomic_dir(out) as tmp:
            tmp_store = storage.storage
            # Written by the executors (a Parquet dataset folder): no per-tile row passes through the driver.
            pairs.select("tile_id", "left", "bottom", "right", "top", "from_label", "to_label", "changed",
                         "out_of_distribution").write.parquet(
                tmp_store.spark_path(join(tmp, "transitions.parquet")))
            tmp_store.write_text(join(tmp, "transition_matrix.csv"), csv_files.to_csv(table, index=True))
            tmp_store.write_bytes(join(tmp, "change.png"), png)
            changes = change.for_web_map()
            layer = MapLayer(f"Land-use change {base} -> {key}", [f"became {c}" for c in classes], colours,
                             ("from_label", "to_label"), after_summary.model_id, fill_label="unchanged",
                             trust=("", "out of distribution in either vintage") if ood else ())
            if ood:  # trust 2 marks a transition out of distribution (the web map's dashed outline)
                from pyspark.sql import functions as F

                changes = changes.withColumn("trust", F.when(F.col("out_of_distribution"), 2).otherwise(0))
            html_entry = _html_map(tmp_store, join(tmp, "change.html"), join(out, "change.html"),
                                   frames_of(changes, [*LONLAT, "value", "from_label", "to_label",
                                                       *(("trust",) if ood else ())]), layer, n_pairs,
                                   config.interactive_max_tiles)
            _write_geotiff(tmp_store, join(tmp, "change.tif"), grid, grid_def, crs,
                           [hex_to_rgb(c) for c in colours], classes, f"land-use class gained since {base}",
                           {UNCHANGED: "unchanged"})
            ChangeSummary(county=key, baseline=base, classes=classes, matrix=matrix.tolist(), became=became,
                          baseline_model_id=before_summary.model_id, baseline_run_id=before_summary.run_id,
                          model_id=after_summary.model_id, run_id=after_summary.run_id).write(tmp_store, tmp)
        return {
            "baseline": base,
            "tiles_compared": n_pairs,
            "tiles_changed": n_changed,
            **{f"became_{c}": n for c, n in became.items()},
            "transition_matrix": metadata_table(table.reset_index(names="tiles")),
            "change_map": MetadataValue.md(markdown_image(png, f"land-use change {base} to {key}")),
            "transitions": MetadataValue.path(join(out, "transitions.parquet")),
            "change_html": html_entry,
            "tiles_changed_out_of_distribution": n_changed_ood if n_changed_ood is not None else "unknown: no scores",
        }

    return run_per_county(context, work)


@asset_check(asset=county_land_use_change, partitions_def=county_partitions,
             description="Warns when the baseline vintage (or this vintage) was re-scored after the change was "
                         "computed: the change map is then stale.")
def county_land_use_change_inputs_current(context, storage: StorageResource) -> AssetCheckResult:
    """The change of ``area@year`` also reads the predictions of its baseline vintage, another partition of
    ``county_predictions`` that no built-in partition mapping of Dagster can name (counties are dynamic
    partitions, and the baseline is chosen by config), so Dagster's staleness cannot see it. The change records
    which scoring runs it was computed from (``summary.json``); this check compares them with the predictions
    stored now, so a re-scored baseline shows up in the UI."""
    stale = {key: problem for key in context.partition_keys
             if (problem := stale_change_inputs(storage.storage, storage.layout, key))}
    return AssetCheckResult(
        passed=not stale, severity=AssetCheckSeverity.WARN,
        description="; ".join(stale.values()) or "computed from the predictions stored now",
        metadata={"n_stale": len(stale)},
    )
