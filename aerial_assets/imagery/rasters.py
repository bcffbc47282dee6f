"""Georeferenced imagery: cut rasters into square tiles of a size in metres, read them window by window,
and write class-id maps. Uses rasterio; no Dagster import (runs in Spark executors).

A raster is never loaded whole: tiles are read one window at a time, resampled on read to the
backbone's input size, so memory stays at one batch of tiles whatever the raster's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from aerial_assets.errors import CountyError
from aerial_assets.imagery.decode import to_uint8, value_range
from aerial_assets.storage.backends import raster_opener
from aerial_assets.tables import TILES

TILE_COLUMNS = TILES.names


@dataclass(frozen=True)
class RasterInfo:
    """What tiling needs to know about one raster, read from its header only."""

    uri: str
    crs: str  # WKT or EPSG string
    crs_name: str
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    scale_lo: float
    scale_hi: float

    @property
    def resolution(self) -> float:
        return abs(self.transform[0])

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _value_scale(ds, bands: Sequence[int]) -> tuple[float, float]:
    """The raster's 8-bit conversion range (:func:`imaging.value_range`), from a decimated read (<= ~1 M px)."""
    dtype = np.dtype(ds.dtypes[0])
    if dtype == np.uint8:
        return 0.0, 255.0
    factor = max(1, int(math.sqrt(ds.width * ds.height / 1_000_000)))
    shape = (len(bands), max(1, ds.height // factor), max(1, ds.width // factor))
    sample = ds.read(list(bands), out_shape=shape, masked=True)
    values = sample.compressed() if np.ma.isMaskedArray(sample) else sample.ravel()
    return value_range(values, dtype)


def rgb_bands(count: int) -> list[int]:
    """Bands read as RGB: the first three (RGB of RGBN, as NAIP), or the single band repeated."""
    return [1, 2, 3] if count >= 3 else [1]


def band_note(count: int) -> str:
    """What tiling does with a raster's bands when that is not the plain case (grey, RGB, or NAIP's RGBN):
    said in the county's metadata, never silently."""
    if count == 2:
        return "2 bands: band 1 is read as grey and band 2 is ignored (grey + alpha? not an RGB raster?)"
    if count > 4:
        return f"{count} bands: bands 1-3 are read as RGB and bands 4-{count} are ignored"
    return ""


def open_info(uri: str) -> RasterInfo:
    """Read a raster's header. A raster that cannot be opened or has no CRS is a clear error."""
    import rasterio

    try:
        with rasterio.open(uri, opener=raster_opener(uri)) as ds:
            if ds.crs is None:
                raise CountyError(f"raster {uri} has no CRS: georeference it (gdal_edit.py -a_srs EPSG:XXXX)")
            if not ds.crs.is_projected:
                raise CountyError(
                    f"raster {uri} is in a geographic CRS ({ds.crs}); tiles are sized in metres: reproject it "
                    "to a projected CRS first (gdalwarp -t_srs EPSG:326XX)"
                )
            lo, hi = _value_scale(ds, rgb_bands(ds.count))
            epsg = ds.crs.to_epsg()
            return RasterInfo(
                uri=uri, crs=f"EPSG:{epsg}" if epsg else ds.crs.to_wkt(), crs_name=str(ds.crs.to_string()),
                transform=tuple(ds.transform)[:6], width=ds.width, height=ds.height, count=ds.count,
                dtype=ds.dtypes[0], nodata=ds.nodata, scale_lo=lo, scale_hi=hi,
            )
    except rasterio.errors.RasterioIOError as exc:
        raise CountyError(f"cannot open raster {uri}: {exc}") from exc


def lonlat_bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    """(west, south, east, north) of the raster in EPSG:4326."""
    from rasterio.warp import transform_bounds

    a, _, x0, _, e, y0 = info.transform
    x1, y1 = x0 + a * info.width, y0 + e * info.height
    return transform_bounds(info.crs, "EPSG:4326", min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def grid_shape(info: RasterInfo, tile_size_m: float) -> tuple[int, int, int]:
    """(rows, cols, tile size in pixels) of the full tiles that fit in the raster."""
    tile_px = max(1, round(tile_size_m / info.resolution))
    return info.height // tile_px, info.width // tile_px, tile_px


def tile_windows(info: RasterInfo, raster_index: int, county: str, tile_size_m: float,
                 indices: np.ndarray) -> dict[str, np.ndarray]:
    """Window offsets and bounds (raster CRS and EPSG:4326) of the tiles with the given flat indices."""
    from rasterio.warp import transform as warp

    rows, cols, tile_px = grid_shape(info, tile_size_m)
    indices = np.asarray(indices, dtype=np.int64)
    r, c = indices // max(cols, 1), indices % max(cols, 1)
    a, _, x0, _, e, y0 = info.transform
    left = x0 + c * tile_px * a
    right = left + tile_px * a
    top = y0 + r * tile_px * e
    bottom = top + tile_px * e
    cx, cy = (left + right) / 2, (top + bottom) / 2
    xs = np.concatenate([cx, left, right, left, right])
    ys = np.concatenate([cy, top, top, bottom, bottom])
    lons, lats = warp(info.crs, "EPSG:4326", xs.tolist(), ys.tolist()) if len(xs) else ([], [])
    lons, lats = np.asarray(lons).reshape(5, -1), np.asarray(lats).reshape(5, -1)
    return {
        "tile_id": np.array([f"{county}/{raster_index}/{ri}_{ci}" for ri, ci in zip(r, c, strict=True)], object),
        "raster_uri": np.array([info.uri] * len(indices), object),
        "raster_index": np.full(len(indices), raster_index, np.int32),
        "row": r.astype(np.int32), "col": c.astype(np.int32),
        "col_off": (c * tile_px).astype(np.int32), "row_off": (r * tile_px).astype(np.int32),
        "width_px": np.full(len(indices), tile_px, np.int32), "height_px": np.full(len(indices), tile_px, np.int32),
        "left": np.minimum(left, right), "bottom": np.minimum(top, bottom),
        "right": np.maximum(left, right), "top": np.maximum(top, bottom),
        "lon": lons[0], "lat": lats[0],
        "min_lon": lons[1:].min(axis=0) if len(indices) else lons[0],
        "min_lat": lats[1:].min(axis=0) if len(indices) else lats[0],
        "max_lon": lons[1:].max(axis=0) if len(indices) else lons[0],
        "max_lat": lats[1:].max(axis=0) if len(indices) else lats[0],
    }


def nodata_fraction(ds, col_off: int, row_off: int, size: int) -> float:
    """Share of the window's pixels that are nodata (dataset mask; all-zero pixels when none is set)."""
    from rasterio.windows import Window

    window = Window(col_off, row_off, size, size)
    probe = max(1, min(size, 64))
    mask = ds.read_masks(1, window=window, out_shape=(probe, probe))
    empty = mask == 0
    if ds.nodata is None and not any(f & 0x02 or f & 0x04 or f & 0x08 for f in ds.mask_flag_enums[0] or []):
        data = ds.read(rgb_bands(ds.count), window=window, out_shape=(len(rgb_bands(ds.count)), probe, probe))
        empty = empty | (data == 0).all(axis=0)
    return float(empty.mean())


def read_tile(ds, col_off: int, row_off: int, size: int, out_size: int, scale: tuple[float, float]) -> np.ndarray:
    """One tile window as ``out_size`` x ``out_size`` x 3 uint8 RGB, resampled on read."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    bands = rgb_bands(ds.count)
    data = ds.read(bands, window=Window(col_off, row_off, size, size), out_shape=(len(bands), out_size, out_size),
                   resampling=Resampling.bilinear)
    rgb = to_uint8(np.moveaxis(data, 0, -1), scale)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return np.ascontiguousarray(rgb)


@dataclass(frozen=True)
class MapGrid:
    """The one-pixel-per-tile grid of a county map, aligned on the tiles' own edges.

    A cell is ``cell_x`` wide and ``cell_y`` high (CRS units; the original sample's degree tiles are about
    0.00273 deg of longitude by 0.002015 deg of latitude). ``cell_y`` defaults to ``cell_x`` (square cells), so
    ``MapGrid(left, top, cell, rows, cols)`` still reads as before."""

    left: float
    top: float
    cell_x: float
    rows: int
    cols: int
    cell_y: float | None = None

    def __post_init__(self) -> None:
        if self.cell_y is None:
            object.__setattr__(self, "cell_y", self.cell_x)

    @property
    def square(self) -> bool:
        return bool(np.isclose(self.cell_x, self.cell_y, rtol=1e-6, atol=0.0))

    @property
    def cell(self) -> float:
        """The cell size of a square grid; a grid of other cells has none (use ``cell_x`` and ``cell_y``)."""
        if not self.square:
            raise ValueError(f"the map cells are {self.cell_x:g} x {self.cell_y:g}, not square: use cell_x and cell_y")
        return self.cell_x

    @property
    def transform(self):
        from rasterio.transform import from_origin

        return from_origin(self.left, self.top, self.cell_x, self.cell_y)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return self.left, self.left + self.cols * self.cell_x, self.top - self.rows * self.cell_y, self.top

    def cells(self, left: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.rint((self.top - np.asarray(top)) / self.cell_y).astype(np.int64)
        cols = np.rint((np.asarray(left) - self.left) / self.cell_x).astype(np.int64)
        return rows, cols


def map_grid(left: np.ndarray, right: np.ndarray, bottom: np.ndarray, top: np.ndarray) -> MapGrid:
    """The grid that holds every tile (from tile bounds); cell = the tiles' median width and median height."""
    cell_x = float(np.median(np.asarray(right) - np.asarray(left)))
    cell_y = float(np.median(np.asarray(top) - np.asarray(bottom)))
    x0, y0 = float(np.min(left)), float(np.max(top))
    cols = int(round((float(np.max(right)) - x0) / cell_x))
    rows = int(round((y0 - float(np.min(bottom))) / cell_y))
    return MapGrid(left=x0, top=y0, cell_x=cell_x, rows=rows, cols=cols, cell_y=cell_y)


def class_tags(classes: Sequence[str], colours: Sequence[tuple[int, int, int]],
               extra: dict[int, str] | None = None) -> dict[str, str]:
    """GDAL metadata naming every class value: ``CLASS_<value>=<name>`` and ``COLOR_<value>=#rrggbb`` per class,
    and ``CLASSES`` (JSON, value to name) for programs: ``gdalinfo`` and QGIS's layer properties show them, so a
    map read without this project still says which id is which class."""
    import json

    names = {i: name for i, name in enumerate(classes)} | dict(extra or {})
    tags = {f"CLASS_{value}": name for value, name in names.items()}
    tags |= {f"COLOR_{i}": "#{:02x}{:02x}{:02x}".format(*rgb) for i, rgb in enumerate(colours)}
    tags["CLASSES"] = json.dumps({str(v): n for v, n in names.items()})
    return tags


def write_class_geotiff(path: str, grid: np.ndarray, map_grid_: MapGrid, crs: str,
                        colours: Sequence[tuple[int, int, int]], nodata: int = 255,
                        classes: Sequence[str] = (), description: str = "land-use class",
                        extra_values: dict[int, str] | None = None) -> None:
    """A single-band uint8 Cloud-Optimized GeoTIFF of class ids, in the tiles' CRS and transform, with a colour
    table, the band's description and the class names and colours as tags (:func:`class_tags`). Written as a
    plain GeoTIFF first (the COG driver only copies), then converted; the copy keeps description and tags."""
    import os
    import tempfile

    import rasterio
    from rasterio.shutil import copy as raster_copy

    profile = {
        "driver": "GTiff", "width": grid.shape[1], "height": grid.shape[0], "count": 1, "dtype": "uint8",
        "crs": crs, "transform": map_grid_.transform, "nodata": nodata,
    }
    with tempfile.TemporaryDirectory() as scratch:
        plain = os.path.join(scratch, "plain.tif")
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(grid.astype(np.uint8), 1)
            table = {i: (*rgb, 255) for i, rgb in enumerate(colours)}
            table[nodata] = (0, 0, 0, 0)
            dst.write_colormap(1, table)
            dst.set_band_description(1, description)
            if classes:
                dst.update_tags(1, **class_tags(classes, colours, extra_values))
        raster_copy(plain, path, driver="COG", COMPRESS="DEFLATE", RESAMPLING="NEAREST", OVERVIEWS="NONE")
