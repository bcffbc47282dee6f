"""Cut county rasters into tiles on Spark executors, and read those tiles back for scoring. No Dagster import.

Tiling runs over ``spark.range(n_tiles)`` so that the tile grid is never built on the driver; each
executor opens the raster once per batch and only reads small decimated masks to find nodata tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from aerial_assets.imagery.rasters import TILE_COLUMNS, RasterInfo, nodata_fraction, tile_windows
from aerial_assets.storage.backends import raster_opener
from aerial_assets.tables import TILES, TileStatus

TILE_SCHEMA = TILES.ddl


def tile_frames(info: dict, raster_index: int, county: str, tile_size_m: float,
                max_nodata: float) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """``mapInPandas`` over ``spark.range``: tile windows, bounds and nodata status for each tile index."""
    raster = RasterInfo(**{**info, "transform": tuple(info["transform"])})

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import rasterio

        with rasterio.open(raster.uri, opener=raster_opener(raster.uri)) as ds:
            for frame in frames:
                cols = tile_windows(raster, raster_index, county, tile_size_m, frame["id"].to_numpy())
                fractions, status, reason = [], [], []
                for col_off, row_off, size in zip(cols["col_off"], cols["row_off"], cols["width_px"], strict=True):
                    try:
                        frac = nodata_fraction(ds, int(col_off), int(row_off), int(size))
                        fractions.append(frac)
                        status.append(TileStatus.NODATA.value if frac > max_nodata else TileStatus.OK.value)
                        reason.append(f"{100 * frac:.0f} % nodata" if frac > max_nodata else "")
                    except rasterio.errors.RasterioError as exc:
                        fractions.append(float("nan"))
                        status.append(TileStatus.QUARANTINED.value)
                        reason.append(f"unreadable window: {exc}")
                out = pd.DataFrame(cols)
                out["nodata_fraction"] = fractions
                out["status"] = status
                out["reason"] = reason
                yield out[TILE_COLUMNS]

    return run


def file_tile_rows(summary: pd.DataFrame, folder: str, county: str, crs: str, uris: list[str] | None = None,
                   reasons: list[str] | None = None) -> pd.DataFrame:
    """County tile rows for ready-made tile files (``raster_index`` -1 marks a file, not a window); ``row`` and
    ``col`` count median tile heights and widths from the top-left tile (degree tiles are not square).
    ``uris``/``reasons``: where each file was found and why it is quarantined (:func:`locate_tile_files`);
    by default ``<folder>/<filename>``, all usable."""
    from rasterio.warp import transform as warp

    from aerial_assets.storage.core import join

    n = len(summary)
    left, bottom = summary["left"].to_numpy(), summary["bottom"].to_numpy()
    right, top = summary["right"].to_numpy(), summary["top"].to_numpy()
    xs = np.concatenate([(left + right) / 2, left, right, left, right])
    ys = np.concatenate([(bottom + top) / 2, top, top, bottom, bottom])
    lons, lats = (np.asarray(v).reshape(5, -1) for v in warp(crs, "EPSG:4326", xs.tolist(), ys.tolist()))
    cell_x, cell_y = float(np.median(right - left)), float(np.median(top - bottom))
    return pd.DataFrame({
        "tile_id": [f"{county}/{name}" for name in summary["filename"]],
        "raster_uri": uris if uris is not None else [join(folder, name) for name in summary["filename"]],
        "raster_index": np.full(n, -1, np.int32),
        "row": np.rint((top.max() - top) / cell_y).astype(np.int32),
        "col": np.rint((left - left.min()) / cell_x).astype(np.int32),
        "col_off": np.zeros(n, np.int32), "row_off": np.zeros(n, np.int32),
        "width_px": np.zeros(n, np.int32), "height_px": np.zeros(n, np.int32),
        "left": left, "bottom": bottom, "right": right, "top": top,
        "lon": lons[0], "lat": lats[0], "min_lon": lons[1:].min(axis=0), "min_lat": lats[1:].min(axis=0),
        "max_lon": lons[1:].max(axis=0), "max_lat": lats[1:].max(axis=0),
        "nodata_fraction": np.zeros(n),
        "status": [TileStatus.QUARANTINED.value if r else TileStatus.OK.value for r in (reasons or [""] * n)],
        "reason": reasons if reasons is not None else [""] * n,
    })[TILE_COLUMNS]


def locate_tile_files(names: list[str], folder: str, listed: set[str] | None = None,
                      follow_external_links: bool = False) -> tuple[list[str], list[str]]:
    """(URI, reason) of each summary ``filename`` in the tile ``folder``: the first of
    :func:`~aerial_assets.imagery.tile_summaries.tile_candidates` that exists (``listed``: the folder's files
    for object storage; a local folder is looked at directly), else the name as written (scoring then says
    there is no such file). A reason quarantines the tile: on a local folder, a file whose symlinks lead out
    of the folder (unless ``follow_external_links``), or one that is not a regular file.
    """
    import os

    from aerial_assets.imagery.tile_summaries import tile_candidates
    from aerial_assets.storage.confine import is_within
    from aerial_assets.storage.core import is_local, join, local_path

    local = is_local(folder)
    uris, reasons = [], []
    for name in names:
        candidates = tile_candidates(name)
        if local:
            found = next((c for c in candidates if os.path.lexists(os.path.join(local_path(folder), c))), None)
        else:
            found = next((c for c in candidates if listed is not None and c in listed), None)
        uri = join(folder, found or candidates[0])
        reason = ""
        if local and found is not None:
            path = local_path(uri)
            real = os.path.realpath(path)
            if not follow_external_links and not is_within(path, folder):
                reason = (f"symlink to {real}, outside the tile folder: not followed (set follow_external_links: "
                          "true in the county_tiles config to use files linked from elsewhere)")
            elif os.path.exists(real) and not os.path.isfile(real):
                reason = "not a regular file (a FIFO, socket, device or folder): not read"
        uris.append(uri)
        reasons.append(reason)
    return uris, reasons
