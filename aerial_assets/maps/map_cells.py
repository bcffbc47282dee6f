"""County maps from scored tiles without collecting the tiles: the grid from Spark aggregations, the cells painted
from a bounded stream. No Dagster import.

A map has one pixel per tile. Its extent and cell size come from one aggregation over the predictions; each
tile's row and column are computed on the executors; the driver then receives (row, column, value) triples one
partition at a time (``toLocalIterator``) and paints them into the grid. The driver holds the grid itself
(one byte per map cell: 65,563 tiles of a county ~ 64 KiB, the whole contiguous US at 224 m ~ 160 MB) and at
most one partition of triples, never a table of every tile.
"""

from __future__ import annotations

import numpy as np

from aerial_assets.errors import CountyError
from aerial_assets.imagery.rasters import MapGrid

_BATCH = 65536


def grid_of(df) -> MapGrid | None:
    """The grid holding every tile of ``df`` (columns left, right, bottom, top): a cell is the median tile width
    by the median tile height (degree tiles are not square: 0.00273 x 0.002015 deg near Boston); None when
    ``df`` has no row."""
    from pyspark.sql import functions as F

    row = df.agg(
        F.count(F.lit(1)).alias("n"), F.min("left").alias("x0"), F.max("right").alias("x1"),
        F.min("bottom").alias("y0"), F.max("top").alias("y1"),
        F.percentile_approx(F.col("right") - F.col("left"), 0.5, 100000).alias("cell_x"),
        F.percentile_approx(F.col("top") - F.col("bottom"), 0.5, 100000).alias("cell_y"),
    ).first()
    if not row["n"]:
        return None
    cell_x, cell_y = float(row["cell_x"]), float(row["cell_y"])
    if not cell_x > 0:
        raise CountyError(f"tiles have a width of {cell_x}: check the tile bounds of this county")
    if not cell_y > 0:
        raise CountyError(f"tiles have a height of {cell_y}: check the tile bounds of this county")
    return MapGrid(left=float(row["x0"]), top=float(row["y1"]), cell_x=cell_x, cell_y=cell_y,
                   rows=int(round((float(row["y1"]) - float(row["y0"])) / cell_y)),
                   cols=int(round((float(row["x1"]) - float(row["x0"])) / cell_x)))


def with_cells(df, grid: MapGrid):
    """``df`` with the map row ``r`` and column ``c`` of each tile (its top-left corner's nearest cell)."""
    from pyspark.sql import functions as F

    return (df.withColumn("r", F.bround((F.lit(grid.top) - F.col("top")) / grid.cell_y).cast("int"))
              .withColumn("c", F.bround((F.col("left") - F.lit(grid.left)) / grid.cell_x).cast("int")))


def paint(df, grid: MapGrid, value_col: str, fill: int) -> np.ndarray:
    """A ``uint8`` grid, ``fill`` everywhere but at the (``r``, ``c``) of each row of ``df``, set to ``value_col``.

    Streams one partition at a time to the driver; cells outside the grid are ignored (they cannot occur for
    tiles the grid was computed from)."""
    out = np.full((grid.rows, grid.cols), fill, np.uint8)
    rows, cols, values = [], [], []

    def flush() -> None:
        r, c, v = np.asarray(rows, np.int64), np.asarray(cols, np.int64), np.asarray(values, np.int64)
        inside = (r >= 0) & (r < grid.rows) & (c >= 0) & (c < grid.cols)
        out[r[inside], c[inside]] = v[inside].astype(np.uint8)
        rows.clear()
        cols.clear()
        values.clear()

    for row in df.select("r", "c", value_col).toLocalIterator(prefetchPartitions=False):
        rows.append(row[0])
        cols.append(row[1])
        values.append(row[2])
        if len(rows) >= _BATCH:
            flush()
    if rows:
        flush()
    return out


def frames_of(df, columns: list[str], batch: int = _BATCH):
    """``df``'s ``columns`` as pandas frames of at most ``batch`` rows, streamed one partition at a time."""
    import pandas as pd

    rows: list = []
    for row in df.select(*columns).toLocalIterator(prefetchPartitions=False):
        rows.append(tuple(row))
        if len(rows) >= batch:
            yield pd.DataFrame(rows, columns=columns)
            rows = []
    if rows:
        yield pd.DataFrame(rows, columns=columns)
