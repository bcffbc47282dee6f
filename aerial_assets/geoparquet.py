"""GeoParquet for tile predictions: a WKB polygon per tile and the ``geo`` file metadata (GeoParquet 1.1).

Spark writes the Parquet parts; this rewrites each part (one at a time, so memory stays at one part)
with a ``geometry`` column and the metadata GIS tools (GeoPandas, QGIS, DuckDB) need. No Dagster import.
"""

from __future__ import annotations

import glob
import json
import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GEOPARQUET_VERSION = "1.1.0"


def rectangles_wkb(left, bottom, right, top) -> list[bytes]:
    """Little-endian WKB polygons (one ring, closed) for axis-aligned tile rectangles."""
    head = struct.pack("<BIII", 1, 3, 1, 5)
    out = []
    for x0, y0, x1, y1 in zip(np.asarray(left), np.asarray(bottom), np.asarray(right), np.asarray(top), strict=True):
        out.append(head + struct.pack("<10d", x0, y0, x1, y0, x1, y1, x0, y1, x0, y0))
    return out


def geo_metadata(crs_projjson: dict, bbox: list[float]) -> dict:
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs_projjson,
                                 "bbox": bbox}},
    }


def crs_projjson(crs: str) -> dict:
    from rasterio.crs import CRS

    return CRS.from_user_input(crs).to_dict(projjson=True)


def _with_geometry(table: pa.Table, projjson: dict) -> pa.Table:
    cols = {c: table.column(c).to_numpy() for c in ("left", "bottom", "right", "top")}
    geometry = pa.array(rectangles_wkb(cols["left"], cols["bottom"], cols["right"], cols["top"]), pa.binary())
    table = table.append_column("geometry", geometry)
    bbox = ([float(cols["left"].min()), float(cols["bottom"].min()), float(cols["right"].max()),
             float(cols["top"].max())] if table.num_rows else [])
    metadata = {**(table.schema.metadata or {}), b"geo": json.dumps(geo_metadata(projjson, bbox)).encode()}
    return table.replace_schema_metadata(metadata)


def _rewrite_in_storage(folder: str, projjson: dict) -> int:
    """The same for a folder that Spark wrote straight to cloud storage (``abfss://``), part by part."""
    import io

    from aerial_assets.storage import storage_for

    store, rows = storage_for(folder), 0
    for entry in store.list_files(folder):
        if "/" in entry.relative_path or not entry.relative_path.endswith(".parquet"):
            continue
        table = _with_geometry(pq.read_table(io.BytesIO(store.read_bytes(entry.uri))), projjson)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="snappy")
        store.write_bytes(entry.uri, buf.getvalue())
        rows += table.num_rows
    return rows


def rewrite_as_geoparquet(folder: str, crs: str) -> int:
    """Add geometry and ``geo`` metadata to every Parquet part under ``folder`` (a local path or a storage URI);
    returns the row count."""
    from aerial_assets.storage import is_local, local_path

    projjson = crs_projjson(crs)
    if not is_local(folder):
        return _rewrite_in_storage(folder, projjson)
    folder = local_path(folder)
    rows = 0
    for part in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
        table = _with_geometry(pq.read_table(part), projjson)
        tmp = f"{part}.tmp"
        pq.write_table(table, tmp, compression="snappy")
        os.replace(tmp, part)
        # Hadoop's local filesystem keeps a checksum beside each part; the rewritten part has a new one.
        crc = os.path.join(os.path.dirname(part), f".{os.path.basename(part)}.crc")
        if os.path.exists(crc):
            os.remove(crc)
        rows += table.num_rows
    return rows
