"""Seeded synthetic aerial-looking imagery, so a fresh clone runs end to end with no download.

The six land-cover classes of the original sample (Barren, Cultivated, Developed, Forest,
Herbaceous, Shrub) are painted with simple procedural textures: colours and structures that
resemble what a 1 m aerial photo shows (tree crowns, field strips, roofs and roads). This is
*synthetic* data for demos and tests; it says nothing about accuracy on real imagery.
The same painters fill a county mosaic (a GeoTIFF in NAD83 / UTM zone 19N) from a known
land-cover layout, so the demo map can be checked against the truth it was painted from.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

DEMO_CLASSES = ("Barren", "Cultivated", "Developed", "Forest", "Herbaceous", "Shrub")
JPEG_QUALITY = 75  # the demo's training tiles are JPEG files (Pillow's default quality); its county goes through the same
DEMO_CRS = "EPSG:26919"  # NAD83 / UTM zone 19N, as for Middlesex County, MA
DEMO_ORIGIN = (305_000.0, 4_720_000.0)  # upper-left corner (metres), inside Middlesex County


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, np.float32) / 255.0


def _colour(rng: np.random.Generator, base: tuple[int, int, int], jitter: int) -> np.ndarray:
    return np.clip(np.array(base, np.float32) + rng.integers(-jitter, jitter + 1, 3), 0, 255)


def _blend(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return mask[..., None] * a + (1 - mask[..., None]) * b


def _grain(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    return rng.normal(0, amount, (size, size, 1)).astype(np.float32)


def _forest(rng: np.random.Generator, s: int) -> np.ndarray:
    img = np.broadcast_to(_colour(rng, (40, 75, 38), 10), (s, s, 3)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:s, 0:s]
    for _ in range(int(s * s / 90)):
        cy, cx, r = rng.integers(0, s), rng.integers(0, s), rng.integers(max(2, s // 56), max(3, s // 18))
        crown = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        img[crown] = _colour(rng, (30, 90, 35), 18)
    img *= (0.75 + 0.5 * _smooth_noise(rng, s, 6))[..., None]
    return img + _grain(rng, s, 6)


def _cultivated(rng: np.random.Generator, s: int) -> np.ndarray:
    palette = [(150, 120, 80), (120, 150, 70), (190, 170, 100), (100, 130, 60), (160, 140, 90)]
    img = np.zeros((s, s, 3), np.float32)
    yy, xx = np.mgrid[0:s, 0:s]
    split = rng.integers(s // 4, 3 * s // 4)
    vertical = rng.random() < 0.5
    coord = xx if vertical else yy
    for sel in (coord < split, coord >= split):
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(s / 40, s / 18)
        rows = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        base = _colour(rng, palette[rng.integers(len(palette))], 12)
        strip = base * (0.85 + 0.15 * rows[..., None])
        img[sel] = strip[sel]
    return img + _grain(rng, s, 4)


def _developed(rng: np.random.Generator, s: int) -> np.ndarray:
    img = np.broadcast_to(_colour(rng, (125, 125, 120), 12), (s, s, 3)).astype(np.float32).copy()
    road = max(2, s // 28)
    for pos in rng.integers(0, s, rng.integers(1, 4)):
        img[max(0, pos - road):pos + road, :] = _colour(rng, (70, 70, 72), 6)
    for pos in rng.integers(0, s, rng.integers(1, 3)):
        img[:, max(0, pos - road):pos + road] = _colour(rng, (70, 70, 72), 6)
    roofs = [(180, 90, 70), (200, 200, 195), (90, 90, 100), (150, 60, 50), (220, 215, 200)]
    for _ in range(rng.integers(8, 20)):
        h, w = rng.integers(s // 16, s // 6, 2)
        y, x = rng.integers(0, s - h), rng.integers(0, s - w)
        img[y:y + h, x:x + w] = _colour(rng, roofs[rng.integers(len(roofs))], 15)
    return img + _grain(rng, s, 5)


def _barren(rng: np.random.Generator, s: int) -> np.ndarray:
    base = _colour(rng, (190, 170, 140), 15)
    dark = base * 0.75
    mask = _smooth_noise(rng, s, 5)
    return _blend(mask, base, dark) + _grain(rng, s, 10)


def _herbaceous(rng: np.random.Generator, s: int) -> np.ndarray:
    base = _colour(rng, (150, 175, 90), 12)
    other = _colour(rng, (130, 160, 80), 12)
    return _blend(_smooth_noise(rng, s, 4), base, other) + _grain(rng, s, 4)


def _shrub(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _blend(_smooth_noise(rng, s, 5), _colour(rng, (140, 130, 90), 10), _colour(rng, (120, 120, 80), 10))
    yy, xx = np.mgrid[0:s, 0:s]
    for _ in range(int(s * s / 400)):
        cy, cx, r = rng.integers(0, s), rng.integers(0, s), rng.integers(1, max(2, s // 40))
        img[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] = _colour(rng, (60, 80, 45), 10)
    return img + _grain(rng, s, 6)


PAINTERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "Barren": _barren,
    "Cultivated": _cultivated,
    "Developed": _developed,
    "Forest": _forest,
    "Herbaceous": _herbaceous,
    "Shrub": _shrub,
}


def paint_tile(label: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One size x size x 3 uint8 tile of the given class."""
    return np.clip(PAINTERS[label](rng, size), 0, 255).astype(np.uint8)


def write_training_tiles(root: str, per_class: int = 50, size: int = 224, seed: int = 0,
                         fmt: str = "png") -> int:
    """Write ``<root>/<Class>/<class>_NNN.<fmt>`` for the six demo classes; returns the file count."""
    rng = np.random.default_rng(seed)
    count = 0
    for label in DEMO_CLASSES:
        folder = os.path.join(root, label)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            buf = io.BytesIO()
            if fmt == "jpg":
                Image.fromarray(paint_tile(label, rng, size)).save(buf, format="JPEG", quality=JPEG_QUALITY)
            else:
                Image.fromarray(paint_tile(label, rng, size)).save(buf, format="PNG")
            with open(os.path.join(folder, f"{label.lower()}_{i:03d}.{fmt}"), "wb") as handle:
                handle.write(buf.getvalue())
            count += 1
    return count


def county_layout(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A plausible land-cover layout (indices into DEMO_CLASSES): a town, its fields and woods."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows * rng.uniform(0.3, 0.7), cols * rng.uniform(0.3, 0.7)
    dist = np.hypot((yy - cy) / rows, (xx - cx) / cols)
    wet = _smooth_noise(rng, max(rows, cols), 3)[:rows, :cols]
    layout = np.where(wet > 0.55, DEMO_CLASSES.index("Forest"), DEMO_CLASSES.index("Cultivated"))
    layout = np.where((wet > 0.4) & (wet <= 0.47), DEMO_CLASSES.index("Herbaceous"), layout)
    layout = np.where((wet > 0.8), DEMO_CLASSES.index("Shrub"), layout)
    layout = np.where((wet < 0.12), DEMO_CLASSES.index("Barren"), layout)
    layout = np.where(dist < 0.22, DEMO_CLASSES.index("Developed"), layout)
    return layout.astype(np.uint8)


def write_county_raster(path: str, rows: int = 10, cols: int = 12, tile_px: int = 224, resolution: float = 1.0,
                        seed: int = 0, bands: int = 3, dtype: str = "uint8", layout: np.ndarray | None = None,
                        nodata_tiles: int = 0, jpeg_quality: int | None = None) -> np.ndarray:
    """Write a tiled, compressed GeoTIFF mosaic painted from :func:`county_layout`; returns the layout.

    The raster is written one tile-row at a time, so memory stays at one strip whatever the size.
    ``dtype="uint16"`` writes 16-bit samples (x 257, as a 16-bit sensor would); ``bands=4`` adds a
    near-infrared band; the last ``nodata_tiles`` tiles are left empty (0, the nodata value). ``jpeg_quality``:
    each tile goes through a JPEG round trip first, as the demo's training tiles (JPEG files) do, so that the
    county looks like them to the out-of-distribution model (lossless tiles are, to ImageNet features, another
    kind of image than JPEG ones).
    """
    import rasterio
    from rasterio.transform import from_origin

    layout = county_layout(rows, cols, seed) if layout is None else layout
    rng = np.random.default_rng(seed + 1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    profile = {
        "driver": "GTiff", "width": cols * tile_px, "height": rows * tile_px, "count": bands, "dtype": dtype,
        "nodata": 0 if nodata_tiles else None,
        "crs": DEMO_CRS, "transform": from_origin(DEMO_ORIGIN[0], DEMO_ORIGIN[1], resolution, resolution),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
    }
    tmp = f"{path}.tmp"
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(rows):
            strip = np.zeros((bands, tile_px, cols * tile_px), np.uint8)
            for c in range(cols):
                if r * cols + c >= rows * cols - nodata_tiles:
                    continue
                tile = paint_tile(DEMO_CLASSES[layout[r, c]], rng, tile_px)
                if jpeg_quality is not None:
                    buf = io.BytesIO()
                    Image.fromarray(tile).save(buf, format="JPEG", quality=jpeg_quality)
                    tile = np.asarray(Image.open(buf).convert("RGB"))
                if nodata_tiles:
                    tile = np.maximum(tile, 1)  # 0 is reserved for nodata
                strip[:3, :, c * tile_px:(c + 1) * tile_px] = np.moveaxis(tile, -1, 0)
                if bands > 3:  # a plausible near-infrared band: bright over vegetation
                    strip[3, :, c * tile_px:(c + 1) * tile_px] = np.clip(tile[..., 1] * 1.3, 0, 255)
            data = strip.astype(np.uint16) * 257 if dtype == "uint16" else strip
            dst.write(data.astype(dtype), window=rasterio.windows.Window(0, r * tile_px, cols * tile_px, tile_px))
    os.replace(tmp, path)
    return layout
