"""What the asset checks of ``county_predictions`` verify, read from the GeoParquet parts themselves. No Dagster import.

The checks read the files a user will read (not the Spark plan that wrote them), one part at a time, so the
driver holds one part's probability columns at most (a few hundred tiles, ``tiles_per_task``): the class
probabilities of every scored tile sum to 1, the share of quarantined tiles, and every part is GeoParquet
(``geo`` metadata naming a WKB ``geometry`` column that exists) in the county's CRS.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from aerial_assets.storage.backends import storage_for
from aerial_assets.storage.core import Storage
from aerial_assets.tables import TileStatus

PROBABILITY_TOLERANCE = 1e-4


@dataclass
class PredictionsReport:
    """What one county's prediction files hold, for the checks to judge."""

    parts: int = 0
    rows: int = 0
    scored: int = 0
    quarantined: int = 0
    max_probability_error: float = 0.0  # max over scored tiles of |sum of class probabilities - 1|
    worst_tile: str = ""
    geo_problems: list[str] = field(default_factory=list)

    @property
    def quarantine_share(self) -> float:
        return self.quarantined / self.rows if self.rows else 0.0


def _same_crs(projjson: object, expected: str) -> bool:
    from rasterio.crs import CRS

    try:
        return CRS.from_user_input(json.dumps(projjson)) == CRS.from_user_input(expected)
    except Exception:  # noqa: BLE001 - an unparsable CRS is a mismatch, reported as such
        return False


def _geo_problem(name: str, schema, expected_crs: str) -> str | None:
    raw = (schema.metadata or {}).get(b"geo")
    if raw is None:
        return f"{name}: no 'geo' metadata (not GeoParquet)"
    try:
        geo = json.loads(raw)
        primary = geo["primary_column"]
        column = geo["columns"][primary]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{name}: unreadable 'geo' metadata ({exc})"
    if primary not in schema.names:
        return f"{name}: 'geo' names primary column {primary!r}, which the file does not have"
    if column.get("encoding") != "WKB":
        return f"{name}: geometry encoding {column.get('encoding')!r}, expected WKB"
    if "crs" not in column or not _same_crs(column["crs"], expected_crs):
        return f"{name}: CRS in 'geo' metadata is not the county's {expected_crs}"
    return None


def inspect_predictions(folder: str, expected_crs: str, store: Storage | None = None) -> PredictionsReport:
    """Read every part of the ``predictions.parquet`` folder (local path or storage URI) through ``store``
    (None: the URI's backend with this process's environment)."""
    store = store or storage_for(folder)
    report = PredictionsReport()
    for entry in store.list_files(folder):
        if not entry.relative_path.endswith(".parquet") or "/" in entry.relative_path:
            continue
        report.parts += 1
        try:
            handle = pq.ParquetFile(io.BytesIO(store.read_bytes(entry.uri)))
        except Exception as exc:  # noqa: BLE001 - a corrupt part is what this check exists to find
            report.geo_problems.append(f"{entry.relative_path}: not a readable Parquet file ({exc})")
            continue
        schema = handle.schema_arrow
        if problem := _geo_problem(entry.relative_path, schema, expected_crs):
            report.geo_problems.append(problem)
        probs = [c for c in schema.names if c.startswith("prob_")]
        table = handle.read(columns=["tile_id", "status", *probs])
        status = table.column("status").to_numpy(zero_copy_only=False)
        ok = status == TileStatus.OK.value
        report.rows += table.num_rows
        report.scored += int(ok.sum())
        report.quarantined += int((~ok).sum())
        if probs and ok.any():
            matrix = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(float) for c in probs])[ok]
            error = np.abs(np.nan_to_num(matrix, nan=np.inf).sum(axis=1) - 1.0)
            worst = int(np.argmax(error))
            if error[worst] > report.max_probability_error:
                report.max_probability_error = float(error[worst])
                report.worst_tile = str(table.column("tile_id").to_numpy(zero_copy_only=False)[ok][worst])
    if report.parts == 0:
        report.geo_problems.append(f"no Parquet part under {folder}")
    return report
