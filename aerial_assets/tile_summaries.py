"""Ready-made tiles described by a summary CSV (one row per tile image): parse and check it. No Dagster import.

Columns: ``filename`` (relative to the tile folder) and ``left, bottom, right, top`` (tile bounds in the
CRS the registry names). Extra columns are kept out of the way. A row with a missing or non-numeric
bound, or an empty rectangle, rejects the file with its line number (line 1 is the header).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from aerial_assets.errors import CountyError

REQUIRED = ["filename", "left", "bottom", "right", "top"]


def parse_tile_summary(text: str, source: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CountyError(f"tile summary {source} is not a CSV file: {exc}") from exc
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise CountyError(f"tile summary {source} lacks column(s) {', '.join(missing)}; it needs "
                          f"{', '.join(REQUIRED)} (bounds in the CRS named in the registry)")
    out = pd.DataFrame({"filename": frame["filename"].str.strip()})
    for col in ("left", "bottom", "right", "top"):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            line = int(bad[0]) + 2
            raise CountyError(f"tile summary {source}, line {line}: {col} is {frame[col].iloc[bad[0]]!r}, not a number")
        out[col] = values.astype(float)
    empty = np.flatnonzero(((out["left"] >= out["right"]) | (out["bottom"] >= out["top"])).to_numpy())
    if len(empty):
        line = int(empty[0]) + 2
        raise CountyError(f"tile summary {source}, line {line}: bounds are not a rectangle (need left < right and "
                          "bottom < top)")
    unnamed = np.flatnonzero((out["filename"] == "").to_numpy())
    if len(unnamed):
        raise CountyError(f"tile summary {source}, line {int(unnamed[0]) + 2}: filename is empty")
    return out
