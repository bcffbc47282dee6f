"""GeoParquet for tile predictions: a WKB polygon per tile and the ``geo`` file metadata (GeoParquet 1.1).

Spark executors write the parts themselves (:func:`part_writer`), each with a ``geometry`` column and the
metadata GIS tools (GeoPandas, QGIS, DuckDB) need; the driver sees one summary row per task. pyarrow writes
the files because Spark's Parquet writer cannot set a file's key-value metadata. No Dagster import.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from aerial_assets.spark.part_files import EMPTY_PART, write_part
from aerial_assets.tables import TileStatus

GEOPARQUET_VERSION = "1.1.0"


def rectangles_wkb(left, bottom, right, top) -> list[bytes]:
    """Little-endian WKB polygons (one ring, closed) for axis-aligned tile rectangles."""
    head = struct.pack("<BIII", 1, 3, 1, 5)
    out = []
    for x0, y0, x1, y1 in zip(np.asarray(left), np.asarray(bottom), np.asarray(right), np.asarray(top), strict=True):
        out.append(head + struct.pack("<10d", x0, y0, x1, y0, x1, y1, x0, y1, x0, y0))
    return out


BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


def geo_metadata(crs_projjson: dict, bbox: list[float]) -> dict:
    """GeoParquet 1.1 ``geo`` metadata, with the ``bbox`` covering column declared so that readers (GDAL,
    DuckDB, GeoPandas) can skip row groups by extent without decoding geometries."""
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs_projjson,
                                 "bbox": bbox,
                                 "covering": {"bbox": {f: ["bbox", f] for f in BBOX_FIELDS}}}},
    }


def crs_projjson(crs: str) -> dict:
    from rasterio.crs import CRS

    return CRS.from_user_input(crs).to_dict(projjson=True)


def with_geometry(table: pa.Table, projjson: dict) -> tuple[pa.Table, list[float]]:
    """``table`` with a WKB ``geometry`` column of its tile rectangles and the GeoParquet 1.1 ``bbox`` covering
    column (a struct of xmin, ymin, xmax, ymax per row), and the rectangles' overall bbox."""
    cols = {c: table.column(c).to_numpy() for c in ("left", "bottom", "right", "top")}
    geometry = pa.array(rectangles_wkb(cols["left"], cols["bottom"], cols["right"], cols["top"]), pa.binary())
    covering = pa.StructArray.from_arrays(
        [pa.array(cols[c], pa.float64()) for c in ("left", "bottom", "right", "top")], names=list(BBOX_FIELDS))
    bbox = ([float(cols["left"].min()), float(cols["bottom"].min()), float(cols["right"].max()),
             float(cols["top"].max())] if table.num_rows else [])
    return table.append_column("geometry", geometry).append_column("bbox", covering), bbox


def with_geo_metadata(schema: pa.Schema, projjson: dict, bbox: list[float]) -> dict[bytes, bytes]:
    return {**(schema.metadata or {}), b"geo": json.dumps(geo_metadata(projjson, bbox)).encode()}


PART_SCHEMA = "file string, rows long, n_ok long, counts string, min_x double, min_y double, max_x double, max_y double"


def part_writer(folder: str, crs: str, arrow_schema: pa.Schema) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function by which each Spark task writes its rows as one GeoParquet file.

    Executors write their own output, so no prediction row passes through the driver: every task writes
    ``<folder>/part-<partition>-<attempt>-<token>.parquet`` with a ``geometry`` column and the file's ``geo``
    metadata (CRS and bbox), and yields one summary row (file name, row count, ``ok`` rows, predicted-class
    counts as JSON, bbox). A task holds its own rows only (a few hundred tiles, ``tiles_per_task``), so the bbox
    is known before the file is written. A task attempt that fails leaves at most a file that no summary names;
    :func:`remove_unlisted` deletes those. ``folder`` is a local path or a storage URI (the executor uploads
    through the storage layer). ``arrow_schema`` is the rows' Spark schema in Arrow form: every part has the
    same column types, also where a part's column is all null.
    """
    projjson = crs_projjson(crs)

    def write(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        tables = [pa.Table.from_pandas(f, schema=arrow_schema, preserve_index=False) for f in frames if not f.empty]
        if not tables:
            yield pd.DataFrame([{"file": "", "rows": 0, "n_ok": 0, "counts": "{}", "min_x": None, "min_y": None,
                                 "max_x": None, "max_y": None}])
            return
        table, bbox = with_geometry(pa.concat_tables(tables), projjson)
        table = table.replace_schema_metadata(with_geo_metadata(table.schema, projjson, bbox))
        name = write_part(folder, table)
        status = table.column("status").to_numpy(zero_copy_only=False)
        labels = table.column("predicted_label").to_numpy(zero_copy_only=False)[status == TileStatus.OK.value]
        names, counts = np.unique(labels.astype(str), return_counts=True)
        yield pd.DataFrame([{"file": name, "rows": table.num_rows, "n_ok": int((status == TileStatus.OK.value).sum()),
                             "counts": json.dumps({str(k): int(v) for k, v in zip(names, counts, strict=True)}),
                             "min_x": bbox[0], "min_y": bbox[1], "max_x": bbox[2], "max_y": bbox[3]}])

    return write


def write_empty(folder: str, crs: str, arrow_schema: pa.Schema) -> str:
    """One empty GeoParquet part with the full schema, so a county without a scored tile still reads back."""
    projjson = crs_projjson(crs)
    table, _ = with_geometry(arrow_schema.empty_table(), projjson)
    table = table.replace_schema_metadata(with_geo_metadata(table.schema, projjson, []))
    return write_part(folder, table, EMPTY_PART)
