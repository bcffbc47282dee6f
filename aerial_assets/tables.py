"""Tile statuses and the columns of the Spark tables, defined once. No Dagster, no pydantic.

Kept apart from :mod:`aerial_assets.records` (the pydantic side files) because the code that runs on Spark's
executors needs these and nothing else there: every new Python worker imports what its task's function imports, and
pydantic with the records' models added 0.08 s to each featurizing worker's imports (this machine, quiet; more when
the executors start together on busy cores), against 0.03 s for the featurizer's own modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TileStatus(StrEnum):
    """Why a row of a tile table is, or is not, usable: the ``status`` column of every catalog, feature,
    tile and prediction table. A ``StrEnum``, so it is stored (Parquet, CSV, Spark) as its plain value."""

    OK = "ok"
    QUARANTINED = "quarantined"  # unreadable or unusable, with a reason
    NODATA = "nodata"            # a county tile that is mostly nodata: skipped, not scored
    UNMAPPED = "unmapped"        # a labelled tile whose class the label map does not name
    IGNORED = "ignored"          # a labelled tile whose class the label map drops on purpose


SPLITS = ("train", "validation", "test")
"""The values of the ``split`` column of the catalog and the feature tables."""

VIEW_COUNTS: tuple[int, ...] = (1, 4, 8)
"""Rotated/flipped views of a tile that featurization can average (identity; 4 rotations; and their flips)."""


@dataclass(frozen=True)
class TableSchema:
    """A Spark table's columns, defined once: the DDL string Spark takes (``mapInPandas``, ``createDataFrame``)
    and the column names the pandas code on the executors keeps, in the same order."""

    fields: tuple[tuple[str, str], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.fields]

    @property
    def ddl(self) -> str:
        return ", ".join(f"{name} {kind}" for name, kind in self.fields)

    def select(self, names: list[str]) -> TableSchema:
        kinds = dict(self.fields)
        return TableSchema(tuple((name, kinds[name]) for name in names))

    def plus(self, *fields: tuple[str, str]) -> TableSchema:
        return TableSchema((*self.fields, *fields))


_STATUS = (("status", "string"), ("reason", "string"))
_BOUNDS = tuple((name, "double") for name in ("left", "bottom", "right", "top", "lon", "lat", "min_lon", "min_lat",
                                                "max_lon", "max_lat"))

#: ``county_tiles/<county>/tiles.parquet``: one row per tile window of a county raster (or ready-made tile file).
TILES = TableSchema((
    ("tile_id", "string"), ("raster_uri", "string"), ("raster_index", "int"), ("row", "int"), ("col", "int"),
    ("col_off", "int"), ("row_off", "int"), ("width_px", "int"), ("height_px", "int"), *_BOUNDS,
    ("nodata_fraction", "double"), *_STATUS))
#: The columns of a county tile that scoring carries through to the predictions.
PASSTHROUGH = ["tile_id", "raster_index", "row", "col", *(name for name, _ in _BOUNDS)]
#: A county tile's features, as the window featurizer returns them.
WINDOW_FEATURES = TILES.select(PASSTHROUGH).plus(("features", "array<float>"), *_STATUS)
#: ``tile_features/<backbone>/features.parquet``: a labelled tile's features (and every view's, when views > 1).
FEATURES = TableSchema((("tile_id", "string"), ("label", "string"), ("split", "string"),
                        ("features", "array<float>"), ("view_features", "array<float>"), *_STATUS))
#: The rows a classifier trains and is evaluated on.
TRAINING = FEATURES.select(["tile_id", "label", "split", "features"])
#: What decoding a catalog file on an executor says of it.
INSPECTION = TableSchema((("tile_id", "string"), ("width", "int"), ("height", "int"), ("mode", "string"), *_STATUS,
                          ("notes", "string"), ("sha256", "string")))
