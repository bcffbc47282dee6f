"""Training tiles labelled from a land-cover raster (NLCD, or any raster of integer class codes). No Dagster import.

The imagery rasters are cut into square tiles of ``tile_size_m`` metres, exactly as county rasters are
(:func:`aerial_assets.imagery.rasters.grid_shape`). For each tile the land-cover codes under its footprint are read
onto the tile's own pixel grid -- through a ``WarpedVRT`` of the land-cover raster in the imagery's CRS and
grid (nearest neighbour: codes are never averaged), read one tile window at a time, so the land-cover raster
is never loaded whole whatever its size, and its CRS may differ from the imagery's. A legend (YAML
``classes: {Name: [codes]}``) maps codes to classes, and a :class:`LabelRule` decides whether the tile's codes
agree:

* ``points9``: the original study's rule: the 3 x 3 points at 1/6, 3/6 and 5/6 of the window (both axes)
  must all map to one class;
* ``purity``: the plurality class must cover at least ``purity`` of the window's pixels; nodata and codes the
  legend does not map count against it.

A tile that fails is yielded with ``label=None`` and its reason (``mixed codes``, ``unmapped code 11``,
``nodata``), never dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from aerial_assets.errors import ConfigurationError
from aerial_assets.imagery.rasters import RasterInfo, grid_shape, open_info, read_tile
from aerial_assets.safety.redaction import short
from aerial_assets.safety.yaml_files import load_yaml
from aerial_assets.storage.backends import raster_opener
from aerial_assets.storage.core import is_local, join

MIXED = "mixed codes"
NODATA = "nodata"
SPEC_KEYS = ("imagery", "landcover", "legend")


class LabelRule(BaseModel):
    """When a tile's land-cover codes agree enough to label it."""

    mode: Literal["points9", "purity"] = "points9"
    purity: float = Field(0.9, gt=0.0, le=1.0)

    def describe(self) -> str:
        return "3 x 3 points agree" if self.mode == "points9" else f"plurality class >= {self.purity:.0%} of pixels"


def load_legend(text: str, source: str = "legend") -> dict[int, str]:
    """``classes: {ClassName: [code, ...]}`` as {code: class}; a code under two classes is an error."""
    loaded = load_yaml(text, f"legend {source}")
    classes = loaded.get("classes") if isinstance(loaded, dict) else None
    if not isinstance(classes, dict) or not classes:
        raise ConfigurationError(f"legend {source}: expected 'classes: {{ClassName: [codes...]}}', e.g. "
                                 "'classes: {Forest: [41, 42, 43]}'")
    legend: dict[int, str] = {}
    for name, codes in classes.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"legend {source}: class name {short(name)} is not a name")
        codes = [codes] if isinstance(codes, int) else codes
        if not isinstance(codes, list) or not codes:
            raise ConfigurationError(f"legend {source}: class {name} needs a list of integer codes, got {short(codes)}")
        for code in codes:
            if isinstance(code, bool) or not isinstance(code, int):
                raise ConfigurationError(f"legend {source}: class {name}: code {short(code)} is not an integer")
            if code in legend and legend[code] != name:
                raise ConfigurationError(f"legend {source}: code {code} is under both {legend[code]} and {name}")
            legend[code] = name
    return legend


@dataclass(frozen=True)
class TrainingRasters:
    """The training-raster spec (``AERIAL_TRAINING_RASTERS``): imagery rasters, one land-cover raster, a legend."""

    imagery: list[str]
    landcover: str
    legend: str


def parse_spec(text: str, source: str) -> TrainingRasters:
    """``{imagery: [tif, ...], landcover: tif, legend: yaml}``; relative paths are relative to the spec file."""
    loaded = load_yaml(text, f"training rasters {source}")
    if not isinstance(loaded, dict) or any(k not in loaded for k in SPEC_KEYS):
        raise ConfigurationError(f"training rasters {source}: expected the keys {', '.join(SPEC_KEYS)}: "
                                 "'imagery: [a.tif, b.tif]', 'landcover: nlcd.tif', 'legend: legend.yaml'")
    unknown = sorted(str(k)[:80] for k in set(loaded) - set(SPEC_KEYS))
    if unknown:
        raise ConfigurationError(f"training rasters {source}: unknown keys {', '.join(unknown)}")
    imagery = [loaded["imagery"]] if isinstance(loaded["imagery"], str) else loaded["imagery"]
    if not isinstance(imagery, list) or not imagery or not all(isinstance(v, str) and v for v in imagery):
        raise ConfigurationError(f"training rasters {source}: imagery must be a list of raster paths")
    for key in ("landcover", "legend"):
        if not isinstance(loaded[key], str) or not loaded[key]:
            raise ConfigurationError(f"training rasters {source}: {key} must be one path")
    stems = [_stem(v) for v in imagery]
    if len(set(stems)) != len(stems):
        raise ConfigurationError(f"training rasters {source}: two imagery rasters share a file name "
                                 f"({', '.join(stems)}): tile ids are named after it")
    base = os.path.dirname(source) if is_local(source) else source.rsplit("/", 1)[0]
    return TrainingRasters(imagery=[_resolve(base, v) for v in imagery], landcover=_resolve(base, loaded["landcover"]),
                           legend=_resolve(base, loaded["legend"]))


def _resolve(base: str, path: str) -> str:
    if "://" in path or path.startswith("/") or not base:
        return path
    return join(base, path)


def raster_name(uri: str) -> str:
    """A raster's file name: unique within a spec (``parse_spec`` refuses two with one stem), the same in any folder."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _stem(uri: str) -> str:
    return os.path.splitext(raster_name(uri))[0]


def decide(codes: np.ndarray, valid: np.ndarray, legend: dict[int, str], rule: LabelRule) -> tuple[str | None, str]:
    """(label, "") or (None, reason) for one window of codes (``valid`` False where nodata)."""
    codes = np.asarray(codes)
    valid = np.asarray(valid, bool)
    if rule.mode == "points9":
        h, w = codes.shape
        ys = [min(h - 1, int(h * k / 6)) for k in (1, 3, 5)]
        xs = [min(w - 1, int(w * k / 6)) for k in (1, 3, 5)]
        codes, valid = codes[np.ix_(ys, xs)], valid[np.ix_(ys, xs)]
        if not valid.all():
            return None, NODATA
        unmapped = sorted({int(c) for c in codes.ravel() if int(c) not in legend})
        if unmapped:
            return None, f"unmapped code {unmapped[0]}"
        names = {legend[int(c)] for c in codes.ravel()}
        return (names.pop(), "") if len(names) == 1 else (None, MIXED)
    total = codes.size
    values, counts = np.unique(codes[valid], return_counts=True)
    per_class: dict[str, int] = {}
    unmapped: dict[int, int] = {}
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        if int(value) in legend:
            per_class[legend[int(value)]] = per_class.get(legend[int(value)], 0) + count
        else:
            unmapped[int(value)] = count
    if per_class:
        best = max(sorted(per_class), key=lambda name: per_class[name])  # ties: the first name
        if per_class[best] >= rule.purity * total:
            return best, ""
    missing = total - int(valid.sum())
    n_unmapped = sum(unmapped.values())
    allowed = (1.0 - rule.purity) * total
    if missing > allowed and missing >= n_unmapped:
        return None, NODATA
    if n_unmapped > allowed:
        return None, f"unmapped code {max(sorted(unmapped), key=lambda c: unmapped[c])}"
    return None, MIXED


@dataclass
class Tile:
    """One imagery tile, its label (None when its codes do not agree) and why not."""

    tile_id: str
    raster: str
    row: int
    col: int
    left: float
    bottom: float
    right: float
    top: float
    crs: str
    label: str | None
    reason: str
    pixels: np.ndarray = field(repr=False)  # tile_px x tile_px x 3 uint8, the native window

    def record(self) -> dict[str, object]:
        return {"tile_id": self.tile_id, "raster": self.raster, "row": self.row, "col": self.col, "left": self.left,
                "bottom": self.bottom, "right": self.right, "top": self.top, "crs": self.crs,
                "label": self.label or "", "reason": self.reason}


def _fill_value(dtype: np.dtype, nodata: float | None, legend: dict[int, str]) -> float:
    """The warped land cover's nodata: the raster's own, else a value the legend does not map."""
    if nodata is not None:
        return nodata
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        for value in range(int(info.max), int(info.min) - 1, -1):
            if value not in legend:
                return value
    return -9999.0


def label_tiles(imagery_uri: str, landcover_uri: str, legend: dict[int, str], tile_size_m: float,
                rule: LabelRule, info: RasterInfo | None = None) -> Iterator[Tile]:
    """Every full tile of the imagery raster, labelled from the land cover under it (row by row)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    info = info or open_info(imagery_uri)
    rows, cols, tile_px = grid_shape(info, tile_size_m)
    a, _, x0, _, e, y0 = info.transform
    stem = _stem(imagery_uri)
    try:
        landcover = rasterio.open(landcover_uri, opener=raster_opener(landcover_uri))
    except rasterio.errors.RasterioIOError as exc:
        raise ConfigurationError(f"cannot open land-cover raster {landcover_uri}: {exc}") from exc
    with landcover as lc, rasterio.open(imagery_uri, opener=raster_opener(imagery_uri)) as img:
        if lc.crs is None:
            raise ConfigurationError(f"land-cover raster {landcover_uri} has no CRS: georeference it first")
        fill = _fill_value(np.dtype(lc.dtypes[0]), lc.nodata, legend)
        # The land cover on the imagery's own grid; GDAL warps only the source blocks a window needs.
        with WarpedVRT(lc, crs=info.crs, transform=Affine(*info.transform), width=info.width, height=info.height,
                       resampling=Resampling.nearest, src_nodata=lc.nodata, nodata=fill) as vrt:
            for r in range(rows):
                for c in range(cols):
                    window = Window(c * tile_px, r * tile_px, tile_px, tile_px)
                    codes = vrt.read(1, window=window)
                    valid = codes != fill
                    if np.issubdtype(codes.dtype, np.floating):
                        valid &= np.isfinite(codes)
                        codes = np.where(valid, codes, 0).astype(np.int64)
                    label, reason = decide(codes, valid, legend, rule)
                    left, top = x0 + c * tile_px * a, y0 + r * tile_px * e
                    right, bottom = left + tile_px * a, top + tile_px * e
                    pixels = read_tile(img, c * tile_px, r * tile_px, tile_px, tile_px, (info.scale_lo, info.scale_hi))
                    yield Tile(tile_id=f"{stem}_r{r}_c{c}", raster=imagery_uri, row=r, col=c,
                               left=min(left, right), bottom=min(top, bottom), right=max(left, right),
                               top=max(top, bottom), crs=info.crs, label=label, reason=reason, pixels=pixels)
