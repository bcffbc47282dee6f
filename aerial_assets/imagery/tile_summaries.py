"""Ready-made tiles described by a summary CSV (one row per tile image): parse and check it. No Dagster import.

Two layouts are read. The projected one: ``filename`` (relative to the tile folder) and ``left, bottom, right,
top`` (tile bounds in the CRS the registry names). The original sample's ``tile_summaries.csv``: ``filename,
llcrnrlat, llcrnrlon, urcrnrlat, urcrnrlon`` (lower-left and upper-right corners in degrees, EPSG:4326 unless
the registry names another geographic CRS), read as ``left = llcrnrlon, bottom = llcrnrlat, right = urcrnrlon,
top = urcrnrlat``; its ``filename`` may carry the path the tiles were written under (``/data/tiles/a.png``,
``C:\\tiles\\a.png``): such an absolute name is cut to its base name, as the tiles are read from the registry's
folder, while a relative name that stays in the folder (``sub/a.png``) is kept; when scoring, a relative name is
looked up inside the folder first and then by its base name at the folder's root (:func:`tile_candidates`). Extra
columns are kept out of the way. Every row is checked and a bad one
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
# The original sample's corner columns (degrees) and the bound each one is.
DEGREE_COLUMNS = {"llcrnrlon": "left", "llcrnrlat": "bottom", "urcrnrlon": "right", "urcrnrlat": "top"}
DEGREE_REQUIRED = ["filename", "llcrnrlat", "llcrnrlon", "urcrnrlat", "urcrnrlon"]
GEOGRAPHIC_DEFAULT = "EPSG:4326"
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


def summary_format(columns, source: str, crs: str | None = None) -> str:
    """``"projected"`` (``left, bottom, right, top``) or ``"degrees"`` (the original ``llcrnrlat, ...``) for a
    header; a file with both layouts is read as projected when the registry names a CRS, else in degrees."""
    columns = list(columns)
    projected = all(c in columns for c in REQUIRED)
    degrees = all(c in columns for c in DEGREE_REQUIRED)
    if projected and (crs is not None or not degrees):
        return "projected"
    if degrees:
        return "degrees"
    near = DEGREE_REQUIRED if any(c in columns for c in DEGREE_COLUMNS) else REQUIRED
    missing = [c for c in near if c not in columns]
    raise CountyError(f"tile summary {source} lacks column(s) {', '.join(missing)}; it needs either "
                      f"{', '.join(REQUIRED)} (bounds in the CRS named in the registry's 'tiles: crs:') or "
                      f"{', '.join(DEGREE_REQUIRED)} (corners in degrees, the original sample's layout)")


def _base_name(name: str) -> str:
    return re.split(r"[/\\]", name)[-1]


def tile_candidates(name: str) -> list[str]:
    """Where a summary's ``filename`` may be, relative to the tile folder, in order: the name as written
    (``sub/a.png``), then its base name at the folder's root (``a.png``)."""
    normal, base = _normal(name), _base_name(name)
    return [normal] if normal == base else [normal, base]


def parse_tile_summary(text: str, source: str, crs: str | None = None) -> pd.DataFrame:
    """The summary's ``filename, left, bottom, right, top`` after every check above; ``crs`` is the registry's.

    Either layout of the module docstring is read. Without ``crs`` (old callers) the geographic-range check is
    skipped for the projected layout; ``make run`` passes it up front. The degree layout is always checked
    against [-180, 180] x [-90, 90], and a projected ``crs`` with it is refused (its corners are degrees). Its
    ``filename`` is cut to its base name (the original names the path the tiles were written under).
    """
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CountyError(f"tile summary {source} is not a CSV file: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    layout = summary_format(frame.columns, source, crs)
    if layout == "degrees":
        if crs is not None and not _is_geographic(crs, source):
            raise CountyError(
                f"tile summary {source} has corners in degrees (llcrnrlat, llcrnrlon, urcrnrlat, urcrnrlon), but "
                f"the registry's 'tiles: crs:' is {crs!r}, a projected CRS: leave 'crs' out (EPSG:4326) or name a "
                "geographic CRS; bounds in a projected CRS go in columns left, bottom, right, top")
        crs = crs if crs is not None else GEOGRAPHIC_DEFAULT
        for row, name in enumerate(frame["filename"].str.strip()):
            if any(ord(ch) < 32 for ch in name):
                raise CountyError(f"tile summary {source}, line {_line(row)}: filename {name!r} has a control "
                                  "character")
            base = _base_name(name)
            if name and base in ("", ".", ".."):
                raise CountyError(f"tile summary {source}, line {_line(row)}: filename {name!r} names no file")
        frame["filename"] = [_normal(n) if _escape_reason(n) is None else _base_name(n)
                             for n in frame["filename"].str.strip()]
    column = {b: c for c, b in DEGREE_COLUMNS.items()} if layout == "degrees" else {b: b for b in BOUNDS}
    out = pd.DataFrame({"filename": frame["filename"].str.strip()})
    for col in BOUNDS:
        values = pd.to_numeric(frame[column[col]], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise CountyError(f"tile summary {source}, line {_line(int(bad[0]))}: {column[col]} is "
                              f"{frame[column[col]].iloc[bad[0]]!r}, not a number")
        infinite = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
        if len(infinite):
            raise CountyError(f"tile summary {source}, line {_line(int(infinite[0]))}: {column[col]} is "
                              f"{frame[column[col]].iloc[infinite[0]]!r}, not a finite number")
        out[col] = values.astype(float)
    empty = np.flatnonzero(((out["left"] >= out["right"]) | (out["bottom"] >= out["top"])).to_numpy())
    if len(empty):
        need = ("llcrnrlon < urcrnrlon and llcrnrlat < urcrnrlat" if layout == "degrees"
                else "left < right and bottom < top")
        raise CountyError(f"tile summary {source}, line {_line(int(empty[0]))}: bounds are not a rectangle (need "
                          f"{need})")
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
            bounds = ", ".join(str(frame[column[c]].iloc[row]).strip() for c in BOUNDS)
            fix = ("name the projected CRS of the bounds in the registry's 'tiles: crs:' (for example EPSG:26919)"
                   if layout == "projected" else
                   "the columns llcrnrlat, llcrnrlon, urcrnrlat, urcrnrlon hold degrees; bounds in metres go in "
                   "columns left, bottom, right, top with the registry's 'tiles: crs:' naming their CRS")
            raise CountyError(
                f"tile summary {source}, line {_line(row)}: bounds ({bounds}) are outside [-180, 180] x [-90, 90], "
                f"but {crs} is a geographic CRS (degrees): these look like metres; {fix}"
            )
    return out
