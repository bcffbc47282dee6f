import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from aerial_assets.imagery.decode import ImageDecodeError, decode, inspect, load_tile


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_grayscale_and_rgba_become_rgb_with_a_note():
    gray = np.full((20, 30), 100, np.uint8)
    rgb, info = decode(_png(gray))
    assert rgb.shape == (20, 30, 3) and info.notes == ["mode L to RGB"]
    rgba = np.zeros((10, 10, 4), np.uint8)
    assert decode(_png(rgba))[1].notes == ["mode RGBA to RGB"]


def test_four_band_and_16_bit_tiffs_are_converted():
    rng = np.random.default_rng(0)
    four = rng.integers(0, 255, (16, 16, 4), dtype=np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, four, photometric="minisblack", planarconfig="contig")
    rgb, info = decode(buf.getvalue())
    assert rgb.shape == (16, 16, 3)
    np.testing.assert_array_equal(rgb, four[..., :3])
    wide = rng.integers(0, 4000, (12, 12, 3), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, wide, photometric="rgb")
    rgb16, info16 = decode(buf.getvalue())
    assert rgb16.dtype == np.uint8 and any("uint16" in n for n in info16.notes)
    # 12-bit data (max < 4096) keeps its radiometry: divided by 4095 / 255, not contrast-stretched
    np.testing.assert_array_equal(rgb16, (wide / 4095 * 255).astype(np.uint8))


def test_resize_is_counted_and_tile_is_backbone_sized():
    img = np.zeros((150, 150, 3), np.uint8)
    assert "resized 150x150 to 224x224" in inspect(_png(img), 224).notes
    assert load_tile(_png(img), 224).shape == (224, 224, 3)


@pytest.mark.parametrize("payload,reason", [
    (b"", "empty file"),
    (b"hello, I am a text file", "not an image"),
])
def test_bad_bytes_raise_with_reason(payload, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode(payload)


def test_truncated_png_is_detected():
    data = _png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError):
        decode(data[: len(data) // 2])
