"""Ready-made tiles described by a summary CSV (one row per tile image): parse and check it. No Dagster import.

Columns: ``filename`` (relative to the tile folder) and ``left, bottom, right, top`` (tile bounds in the
CRS the registry names). Extra columns are kept out of the way. Every row is checked and a bad one
rejects the file with its line number (line 1 is the header): a missing, non-numeric or infinite bound,
an empty rectangle, an empty or repeated file name (two files in one map cell), a name that leaves the
tile folder (``../x.png``, ``/etc/x.png``, ``az://other/x.png``: tiles are read from the folder only),
and, when the CRS is given, bounds outside [-180, 180] x [-90, 90] under a geographic CRS (metre bounds
named with EPSG:4326 would put a longitude of 305224 in the predictions).
"""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd

from aerial_assets.errors import CountyError

REQUIRED = ["filename", "left", "bottom", "right", "top"]
BOUNDS = ["left", "bottom", "right", "top"]
_ABSOLUTE = re.compile(r"^([/\\]|[A-Za-z]:|[A-Za-z][A-Za-z0-9+.\-]*://)")


def _line(row: int) -> int:
    return row + 2  # line 1 is the header


def _escape_reason(name: str) -> str | None:
    """Why ``name`` does not stay inside the tile folder, or None when it does."""
    if any(ord(ch) < 32 for ch in name):
        return "has a control character"
    if _ABSOLUTE.match(name):
        return "is an absolute path or a URI"
    if ".." in re.split(r"[/\\]", name):
        return "climbs out with '..'"
    return None


def _normal(name: str) -> str:
    """The name as the folder sees it: ``./a//b.png`` and ``a/b.png`` are one file."""
    return "/".join(p for p in re.split(r"[/\\]", name) if p not in ("", "."))


def _is_geographic(crs: str, source: str) -> bool:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return bool(CRS.from_user_input(crs).is_geographic)
    except CRSError:
        raise CountyError(f"tile summary {source}: crs {crs!r} is not a CRS: name the CRS of its bounds in the "
                          "registry, such as 'EPSG:26919'") from None


def parse_tile_summary(text: str, source: str, crs: str | None = None) -> pd.DataFrame:
    """The summary's ``filename, left, bottom, right, top`` after every check above; ``crs`` is the registry's.

    Without ``crs`` (old callers) the geographic-range check is skipped; ``make run`` passes it up front.
    """
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CountyError(f"tile summary {source} is not a CSV file: {exc}") from exc
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise CountyError(f"tile summary {source} lacks column(s) {', '.join(missing)}; it needs "
                          f"{', '.join(REQUIRED)} (bounds in the CRS named in the registry)")
    out = pd.DataFrame({"filename": frame["filename"].str.strip()})
    for col in BOUNDS:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise CountyError(f"tile summary {source}, line {_line(int(bad[0]))}: {col} is "
                              f"{frame[col].iloc[bad[0]]!r}, not a number")
        infinite = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
        if len(infinite):
            raise CountyError(f"tile summary {source}, line {_line(int(infinite[0]))}: {col} is "
                              f"{frame[col].iloc[infinite[0]]!r}, not a finite number")
        out[col] = values.astype(float)
    empty = np.flatnonzero(((out["left"] >= out["right"]) | (out["bottom"] >= out["top"])).to_numpy())
    if len(empty):
        raise CountyError(f"tile summary {source}, line {_line(int(empty[0]))}: bounds are not a rectangle (need "
                          "left < right and bottom < top)")
    first_seen: dict[str, int] = {}
    for row, name in enumerate(out["filename"]):
        if name == "":
            raise CountyError(f"tile summary {source}, line {_line(row)}: filename is empty")
        reason = _escape_reason(name)
        if reason:
            raise CountyError(f"tile summary {source}, line {_line(row)}: filename {name!r} {reason}: name the file "
                              "relative to the tile folder (tiles are read from that folder only)")
        earlier = first_seen.setdefault(_normal(name), row)
        if earlier != row:
            raise CountyError(f"tile summary {source}, line {_line(row)}: filename {name!r} is already on line "
                              f"{_line(earlier)}: each tile file may be listed once")
    if crs is not None and len(out) and _is_geographic(crs, source):
        lon = out[["left", "right"]].abs().max(axis=1).to_numpy() > 180
        lat = out[["bottom", "top"]].abs().max(axis=1).to_numpy() > 90
        outside = np.flatnonzero(lon | lat)
        if len(outside):
            row = int(outside[0])
            bounds = ", ".join(str(frame[c].iloc[row]).strip() for c in BOUNDS)
            raise CountyError(
                f"tile summary {source}, line {_line(row)}: bounds ({bounds}) are outside [-180, 180] x [-90, 90], "
                f"but {crs} is a geographic CRS (degrees): these look like metres; name the projected CRS of the "
                "bounds in the registry's 'tiles: crs:' (for example EPSG:26919)"
            )
    return out
