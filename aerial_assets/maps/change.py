"""Land-use change between two vintages of an area: which vintage to compare with, and the tile-by-tile
transitions, computed on Spark without collecting tiles. No Dagster import."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aerial_assets.errors import CountyError
from aerial_assets.imagery.counties import County, earlier_vintages
from aerial_assets.imagery.rasters import MapGrid
from aerial_assets.maps.map_cells import grid_of, with_cells
from aerial_assets.records import ChangeSummary, PredictionsSummary
from aerial_assets.storage.core import Storage
from aerial_assets.storage.layout import Layout

UNCHANGED = 254  # the change map's value where a tile kept its class


def choose_baseline(registry: dict[str, County], county: County, wanted: str = "") -> str:
    """The partition key of the vintage ``county`` is compared with: ``wanted`` (a key ``area@year`` or just a
    year of the same area), else the latest earlier vintage of the same area."""
    if wanted:
        return wanted if "@" in wanted else f"{county.area_key}@{wanted}"
    earlier = earlier_vintages(registry, county)
    if not earlier:
        raise CountyError(f"county {county.key} has no earlier vintage to compare with: register the area with "
                          "'vintages:' (see docs/user-guide/counties.md) or set the baseline config")
    return earlier[-1].key


def change_plan(registry: dict[str, County], keys: list[str], scored: Callable[[str], bool]
                ) -> tuple[list[str], dict[str, str]]:
    """Which of ``keys`` get their change computed by ``make run``: the vintages with an earlier one whose
    baseline is ``scored``; and the skipped ones with the baseline they lack (``--counties`` left it out)."""
    run, skipped = [], {}
    for key in keys:
        if not earlier_vintages(registry, registry[key]):
            continue
        base = choose_baseline(registry, registry[key])
        if scored(base):
            run.append(key)
        else:
            skipped[key] = base
    return run, skipped


@dataclass
class Transitions:
    """Tile pairs of two vintages on one grid, and the class-to-class counts (rows: before, columns: after)."""

    pairs: object  # a Spark DataFrame: tile_id, bounds, lon/lat, from/to label and index, changed, value
    grid: MapGrid
    matrix: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(self.matrix.sum())

    @property
    def n_changed(self) -> int:
        return int(self.matrix.sum() - np.trace(self.matrix))

    def for_web_map(self):
        """The pairs with ``value`` = the new class where a tile changed, -1 (not drawn) where it did not."""
        from pyspark.sql import functions as F

        return self.pairs.withColumn("value", F.when(F.col("changed"), F.col("predicted_index")).otherwise(-1))

    def became(self, classes: list[str]) -> dict[str, int]:
        """Tiles that changed into each class."""
        return {c: int(self.matrix[:, i].sum() - self.matrix[i, i]) for i, c in enumerate(classes)}


def transitions(before, after, classes: list[str], base: str, key: str) -> Transitions:
    """Match the scored tiles of two vintages (Spark DataFrames with bounds and ``predicted_index``) by position.

    Tiles of two vintages are matched by position on one grid, not by id: rasters of different years rarely
    share an origin to the metre, so a tile matches the cell its corner falls nearest to."""
    from pyspark.sql import functions as F

    grid_def = grid_of(before.unionByName(after))
    if grid_def is None:
        raise CountyError(f"{base} and {key} have no scored tile: check county_tiles (all nodata?)")
    flagged = "in_distribution" in before.columns and "in_distribution" in after.columns
    kept_before = [F.col("predicted_index").alias("predicted_index_before")]
    if flagged:
        kept_before.append(F.col("in_distribution").alias("in_distribution_before"))
    pairs = with_cells(after, grid_def).join(with_cells(before, grid_def).select("r", "c", *kept_before), ["r", "c"])
    # a transition is not to be trusted when its tile is out of distribution in either vintage
    pairs = pairs.withColumn("out_of_distribution", (
        (F.coalesce(F.col("in_distribution"), F.lit(True)) == F.lit(False))
        | (F.coalesce(F.col("in_distribution_before"), F.lit(True)) == F.lit(False))) if flagged
        else F.lit(None).cast("boolean"))
    label_of = F.array(*[F.lit(c) for c in classes])
    pairs = (pairs.withColumn("from_label", F.element_at(label_of, F.col("predicted_index_before") + 1))
                  .withColumn("to_label", F.element_at(label_of, F.col("predicted_index") + 1))
                  .withColumn("changed", F.col("predicted_index_before") != F.col("predicted_index"))
                  .withColumn("value", F.when(F.col("changed"), F.col("predicted_index")).otherwise(UNCHANGED)))
    counts = pairs.groupBy("predicted_index_before", "predicted_index").count().collect()
    if not counts:
        raise CountyError(f"{base} and {key} share no tile position: are they the same area and tile size?")
    matrix = np.zeros((len(classes), len(classes)), np.int64)
    for row in counts:
        matrix[int(row["predicted_index_before"]), int(row["predicted_index"])] += int(row["count"])
    return Transitions(pairs, grid_def, matrix)


def stale_change_inputs(store: Storage, layout: Layout, key: str) -> str:
    """'' when the change of ``key`` was computed from the predictions stored now (of its baseline and of its
    own vintage), else what changed since and what to re-materialize. The change records the scoring run and
    model of both (:class:`aerial_assets.records.ChangeSummary`)."""
    change = ChangeSummary.read(store, layout.county_change(key))
    for vintage, model_id, run_id in ((change.baseline, change.baseline_model_id, change.baseline_run_id),
                                      (key, change.model_id, change.run_id)):
        if not PredictionsSummary.exists(store, layout.county_predictions(vintage)):
            return f"county_predictions[{vintage}] is no longer stored: re-materialize it, then the change"
        now = PredictionsSummary.read(store, layout.county_predictions(vintage))
        if (now.model_id, now.run_id) != (model_id, run_id):
            return (f"county_predictions[{vintage}] was re-scored (now {now.model_id}, run {now.run_id[:8] or '?'}; "
                    f"the change used {model_id or '?'}, run {run_id[:8] or '?'}): re-materialize "
                    f"county_land_use_change[{key}]")
    return ""
