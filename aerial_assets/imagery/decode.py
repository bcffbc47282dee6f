"""Decode tile images of any format, mode and size into the uint8 RGB squares backbones eat.

Pure functions, no Dagster import: they run inside Spark executors. Conversions are reported back
(never applied silently) so that the catalog can count them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: The one pixel limit of every decoder (Pillow's default ``Image.MAX_IMAGE_PIXELS``, about 9,459 x 9,459),
#: checked from the header before anything is decoded: a compressed file of 1 MB can declare gigapixels.
MAX_IMAGE_PIXELS = 89_478_485


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image; the message is the quarantine reason."""


class ImageTooLargeError(ImageDecodeError):
    """The header declares more than :data:`MAX_IMAGE_PIXELS` pixels (a decompression bomb, or not a tile)."""


def check_pixels(width: int, height: int, planes: int = 1) -> None:
    """Refuse an image whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels, before decoding it."""
    pixels = int(width) * int(height) * int(planes)
    if pixels > MAX_IMAGE_PIXELS:
        size = f"{width} x {height}" + (f" x {planes} planes" if planes != 1 else "")
        raise ImageTooLargeError(f"image of {size} px ({pixels:,} pixels) is over the limit of "
                                 f"{MAX_IMAGE_PIXELS:,} pixels (a decompression bomb, or not a tile): not decoded")


@dataclass
class ImageInfo:
    """What the catalog records about a tile file after a full decode."""

    width: int
    height: int
    mode: str
    bands: int
    notes: list[str] = field(default_factory=list)


def value_range(values: np.ndarray, dtype: np.dtype) -> tuple[float, float]:
    """The range mapped linearly onto 0..255 when converting imagery of ``dtype`` to 8 bits.

    Integer imagery keeps its radiometry: the range is its bit depth (8 to 16 bits, from the 99.9th
    percentile), so a 12-bit sensor is divided by 16 and 8-bit data stored as 16-bit by 257 -- a
    per-image contrast stretch would change the colours a classifier learned from. Floats in [0, 1]
    are reflectances; other floats get a 2-98 % stretch.
    """
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    if np.issubdtype(dtype, np.integer):
        top = float(np.percentile(values, 99.9))
        bits = int(np.clip(np.ceil(np.log2(max(top, 1.0) + 1)), 8, 16))
        return 0.0, float(2**bits - 1)
    if values.min() >= 0 and values.max() <= 1.0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 98])
    return float(lo), float(hi if hi > lo else lo + 1)


def to_uint8(array: np.ndarray, value_range_: tuple[float, float] | None = None) -> np.ndarray:
    """Scale any numeric dtype to uint8 over ``value_range_`` (default: :func:`value_range` of the array)."""
    if array.dtype == np.uint8:
        return array
    lo, hi = value_range_ or value_range(array, array.dtype)
    scaled = np.clip((array.astype(np.float64) - lo) / (hi - lo) * 255.0, 0, 255)
    return np.nan_to_num(scaled).astype(np.uint8)


def to_rgb(array: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Any HxW or HxWxB array to HxWx3 uint8; notes say what was converted."""
    notes: list[str] = []
    if array.dtype != np.uint8:
        notes.append(f"dtype {array.dtype} scaled to uint8")
        array = to_uint8(array)
    if array.ndim == 2:
        notes.append("grayscale to RGB")
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 1:
        notes.append("1 band to RGB")
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 2:
        notes.append("2 bands (gray+alpha) to RGB")
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif array.shape[2] > 3:
        notes.append(f"{array.shape[2]} bands, first 3 kept as RGB")
        array = array[:, :, :3]
    return np.ascontiguousarray(array), notes


def _open_pillow(data: bytes, target: int | None) -> tuple[np.ndarray, ImageInfo]:
    try:
        opened = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:  # Pillow's own check, at twice its limit
        raise ImageTooLargeError(f"image is over the limit of {MAX_IMAGE_PIXELS:,} pixels ({exc}): not decoded") from exc
    with opened as img:
        check_pixels(img.width, img.height)
        width, height, mode = img.width, img.height, img.mode
        bands = len(img.getbands())
        if target and img.format == "JPEG":
            # Decode at the smallest power-of-two scale that still covers the target: far less work.
            img.draft("RGB", (target, target))
        img.load()
        notes: list[str] = []
        if img.mode in ("RGB",):
            array = np.asarray(img)
        elif img.mode in ("L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1", "PA", "RGBX"):
            notes.append(f"mode {img.mode} to RGB")
            array = np.asarray(img.convert("RGB"))
        else:
            array, more = to_rgb(np.asarray(img))
            notes.extend(more)
    return array, ImageInfo(width, height, mode, bands, notes)


def _open_tifffile(data: bytes) -> tuple[np.ndarray, ImageInfo]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series = tif.series[0]  # what imread decodes; its shape comes from the page headers
        # Every axis but the samples of a pixel counts: pages of a stack are pixels to decode too.
        planes = math.prod(n for n, axis in zip(series.shape, series.axes, strict=True) if axis not in "YXS")
        check_pixels(series.shape[series.axes.index("X")] if "X" in series.axes else 1,
                     series.shape[series.axes.index("Y")] if "Y" in series.axes else 1, planes)
        array = tif.asarray()
    if array.ndim == 3 and array.shape[0] < array.shape[2] and array.shape[0] <= 16:
        array = np.moveaxis(array, 0, -1)  # planar (bands first) to interleaved
    if array.ndim not in (2, 3):
        raise ImageDecodeError(f"unsupported TIFF shape {array.shape}")
    height, width = array.shape[:2]
    bands = 1 if array.ndim == 2 else array.shape[2]
    rgb, notes = to_rgb(array)
    return rgb, ImageInfo(width, height, f"tiff:{array.dtype}", bands, notes)


def _is_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def decode(data: bytes, target: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode image bytes to an HxWx3 uint8 array. Raises :class:`ImageDecodeError` with a reason.

    TIFFs go through tifffile first: it keeps 16-bit samples and extra bands, which Pillow would
    truncate to their high byte or refuse; Pillow is the fallback (e.g. JPEG-compressed TIFF).
    """
    if not data:
        raise ImageDecodeError("empty file")
    tiff_error: Exception | None = None
    if _is_tiff(data):
        try:
            return _open_tifffile(data)
        except ImageTooLargeError:
            raise  # the header is the same for Pillow: never decode a bomb with the other library
        except Exception as exc:  # noqa: BLE001 - fall back to Pillow, keep the reason
            tiff_error = exc
    try:
        return _open_pillow(data, target)
    except UnidentifiedImageError as exc:
        if tiff_error is not None:
            raise ImageDecodeError(f"unreadable TIFF: {tiff_error}") from exc
        raise ImageDecodeError("not an image (unrecognised format)") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def resize_square(array: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB tile to size x size (the whole scene, no crop: a tile has no centre of interest)."""
    if array.shape[0] == size and array.shape[1] == size:
        return array
    img = Image.fromarray(array)
    return np.asarray(img.resize((size, size), Image.BILINEAR, reducing_gap=3.0))


def load_tile(data: bytes, size: int) -> np.ndarray:
    """Bytes of a tile file to the size x size x 3 uint8 array a backbone expects."""
    array, _ = decode(data, target=size)
    return resize_square(array, size)


def inspect(data: bytes, expected_size: int) -> ImageInfo:
    """Fully decode (catching truncation) and report size, mode and the conversions needed."""
    _, info = decode(data)
    if (info.width, info.height) != (expected_size, expected_size):
        info.notes.append(f"resized {info.width}x{info.height} to {expected_size}x{expected_size}")
    return info
