"""Hostile and careless input (issue 13, items 1, 7, 8 and 11): refused early, by name, without side effects.

Pure tests (no Spark): weights files that try to run code or read outside their bytes, county registries
and tile summaries with the mistakes people make, decompression bombs, and ``make run`` stopping on a bad
registry before any training. Every file here is built for real (pickles opcode by opcode, a zlib TIFF,
a PNG), and the project's own readers are run on it.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import shlex
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image

from aerial_assets.backbones.networks import get_backbone
from aerial_assets.backbones.numpy_weights import load_numpy_pickle
from aerial_assets.backbones.torch_weights import load_state_dict, save_state_dict_zip
from aerial_assets.errors import BackboneError, CountyError
from aerial_assets.imagery.counties import County, parse_registry, render_registry
from aerial_assets.imagery.decode import MAX_IMAGE_PIXELS, ImageDecodeError, decode, inspect, load_tile
from aerial_assets.imagery.tile_summaries import parse_tile_summary

REPO = Path(__file__).resolve().parents[2]


# --- weights files: no code runs, no read outside the file's own bytes ------------------------------------
class _Shell:
    """Pickles as ``os.system(cmd)``: what a hostile weights file holds."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _touch(marker: Path) -> _Shell:
    return _Shell(f"touch {shlex.quote(str(marker))}")


def _frag(value) -> bytes:
    """Pickle opcodes of a primitive value, without the PROTO header and STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tensor_zip(numel: int, size: tuple, stride: tuple, offset: int = 0, data: bytes | None = None) -> bytes:
    """A torch zip checkpoint ``{"w": tensor}`` whose one float32 tensor has the given view on its storage."""
    odict = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    pid = (pickle.MARK + _frag("storage") + _global("torch", "FloatStorage") + _frag("0") + _frag("cpu")
           + _frag(numel) + pickle.TUPLE + pickle.BINPERSID)
    args = (pickle.MARK + pid + _frag(offset) + _frag(tuple(size)) + _frag(tuple(stride)) + _frag(False) + odict
            + pickle.TUPLE)
    body = (pickle.PROTO + b"\x02" + odict + _frag("w") + _global("torch._utils", "_rebuild_tensor_v2") + args
            + pickle.REDUCE + pickle.SETITEM + pickle.STOP)
    data = np.arange(numel, dtype=np.float32).tobytes() if data is None else data
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", body)
        archive.writestr("archive/data/0", data)
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


@pytest.mark.parametrize("position", [0, 1, 2], ids=["magic", "protocol", "sys_info"])
def test_legacy_pth_with_os_system_in_its_header_is_refused_and_never_runs(tmp_path, position):
    marker = tmp_path / "pwned"
    header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
    header[position] = _touch(marker)
    raw = b"".join(pickle.dumps(part, protocol=2) for part in header) + pickle.dumps({}, protocol=2)
    with pytest.raises(BackboneError, match=r"refusing to load posix\.system"):
        load_state_dict(raw)
    assert not marker.exists(), "the weights file ran its command"


def test_zip_pth_with_os_system_in_data_pkl_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(collections.OrderedDict(w=_touch(marker)), protocol=2))
        archive.writestr("archive/version", "3\n")
    with pytest.raises(BackboneError, match=r"refusing to load posix\.system"):
        load_state_dict(out.getvalue())
    assert not marker.exists()


def test_tensor_views_inside_their_storage_load_exactly():
    """The hand-built checkpoint is valid: the refusals below come from the checks, not from a broken file."""
    np.testing.assert_array_equal(load_state_dict(_tensor_zip(6, (2, 3), (3, 1)))["w"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(load_state_dict(_tensor_zip(6, (3,), (2,)))["w"], [0, 2, 4])
    np.testing.assert_array_equal(load_state_dict(_tensor_zip(6, (2,), (1,), offset=4))["w"], [4, 5])
    assert load_state_dict(_tensor_zip(6, (), ()))["w"] == 0
    rng = np.random.default_rng(3)
    state = {"conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "fc.bias": np.arange(5.0)}
    loaded = load_state_dict(save_state_dict_zip(state))  # the project's own writer
    for name, value in state.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)


@pytest.mark.parametrize("numel,size,stride,offset", [
    (4, (64,), (1,), 0),          # a shape larger than its storage
    (4, (4,), (1,), 2),           # an offset that pushes the view past the end
    (4, (2, 2), (4, 1), 0),       # strides that jump past the end
    (16, (4,), (-1,), 8),         # a negative stride reads before the start
    (4, (4,), (1, 1), 0),         # shape and stride of different lengths
    (4, (2,), (2**60,), 0),       # a huge stride (would overflow an index)
    (1, (1_000_000,), (0,), 0),   # a broadcast view: 4 bytes blown up into 4 MB
], ids=["shape", "offset", "stride", "negative", "mismatch", "huge", "broadcast"])
def test_tensor_view_outside_its_storage_is_refused(numel, size, stride, offset):
    with pytest.raises(BackboneError, match="does not fit in storage|not an index|do not match"):
        load_state_dict(_tensor_zip(numel, size, stride, offset))


def test_storage_shorter_than_its_declared_size_is_refused():
    raw = _tensor_zip(16, (16,), (1,), data=np.zeros(4, np.float32).tobytes())  # says 16 elements, holds 4
    with pytest.raises(BackboneError, match="holds 16 bytes, its tensors say 64"):
        load_state_dict(raw)


def test_packaged_legacy_weights_still_load():
    state = load_state_dict(Path(get_backbone("mobilenet_v2").weights_path()).read_bytes())
    assert len(state) == 314 and state["classifier.1.weight"].shape == (1000, 1280)


def test_numpy_weights_with_os_system_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(BackboneError, match=r"refusing to load posix\.system"):
        load_numpy_pickle(pickle.dumps({"conv1": [_touch(marker), np.zeros(2)]}))
    assert not marker.exists()


def test_numpy_weights_may_not_call_the_ndarray_constructor():
    """``numpy.ndarray((n,))`` from a pickle allocates any shape, uninitialised; only numpy's own array
    pickles (``_reconstruct`` + checked state) may make arrays."""
    body = (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + _frag("conv1") + _global("numpy", "ndarray")
            + _frag(((1 << 16),)) + pickle.REDUCE + pickle.SETITEM + pickle.STOP)
    with pytest.raises(BackboneError, match="may not call numpy.ndarray"):
        load_numpy_pickle(body)
    squeezenet = load_numpy_pickle(Path(get_backbone("squeezenet1_1").weights_path()).read_bytes())
    assert squeezenet["conv1"][0].shape == (3, 3, 3, 64) and squeezenet["conv1"][0].flags.writeable


# --- the county registry: validated whole, at parse time --------------------------------------------------
def test_registry_entry_that_is_a_string_is_a_county_error():
    with pytest.raises(CountyError, match=r"county 'a' in reg\.yaml is 'x', not a mapping.*a: \{rasters:"):
        parse_registry('counties: {a: "x"}', "reg.yaml")


@pytest.mark.parametrize("text,message", [
    ("counties: {a: {rasters: [a.tif], year: abc}}", "year 'abc' is not a year"),
    ("counties: {a: {rasters: [a.tif], year: yes}}", "year True is not a year"),
    ("counties: {a: {tiles: {folder: /t, summary: /t/s.csv, crs: 'EPSG:26919'}, year: 20.5}}",
     "year 20.5 is not a year"),
    ("counties: {a: {vintages: {99999: [a.tif]}}}", "vintage 99999 is not a year"),
], ids=["abc", "boolean", "fraction", "vintage"])
def test_registry_year_that_is_not_a_year_is_refused_at_parse_time(text, message):
    with pytest.raises(CountyError, match=rf"county 'a' in reg\.yaml: {message}.*such as"):
        parse_registry(text, "reg.yaml")


@pytest.mark.parametrize("text,message", [
    ("counties: {a: {raster: [a.tif]}}",
     r"county 'a' in reg\.yaml: unknown key 'raster' \(did you mean 'rasters'\?\); allowed keys: bounds, name, "
     "rasters, reference, stac, stac_allowed_roots, stac_asset, tiles, vintages, year"),
    ("counties: {a: {rasters: [a.tif]}}\nsmoothing: true",
     r"county registry reg\.yaml: top-level unknown key 'smoothing'; allowed keys: counties"),
    ("counties: {a: {tiles: {folder: /t, summary: /t/s.csv, crs: 'EPSG:26919', fodler: /u}}}",
     r"county 'a' in reg\.yaml: tiles: unknown key 'fodler' \(did you mean 'folder'\?\); allowed keys: crs, folder, "
     "summary"),
], ids=["entry", "top_level", "tiles"])
def test_registry_unknown_keys_are_refused_with_the_allowed_keys(text, message):
    with pytest.raises(CountyError, match=message):
        parse_registry(text, "reg.yaml")


@pytest.mark.parametrize("key", ["a\\n", "middlesex_ma\\n"], ids=["a", "middlesex_ma"])
def test_registry_key_ending_in_a_newline_is_refused(key):
    with pytest.raises(CountyError, match=r"reg\.yaml: county key .* is not valid: use lower-case letters"):
        parse_registry(f'counties: {{"{key}": {{rasters: [a.tif]}}}}', "reg.yaml")


def test_registry_keeps_its_documented_format_and_render_round_trips():
    text = """
counties:
  middlesex_ma:
    name: Middlesex County, MA
    rasters: [/data/naip/middlesex_2018_a.tif, /data/naip/middlesex_2018_b.tif]
    bounds: [-71.9, 42.2, -71.0, 42.8]
  nd_quad:
    vintages:
      2014: [/data/naip/nd_2014.tif]
      2020: /data/naip/nd_2020.tif
  boston_tiles:
    tiles: {folder: /data/tiles, summary: /data/tiles/tile_summaries.csv, crs: "EPSG:26919"}
"""
    reg = parse_registry(text, "reg.yaml")
    assert sorted(reg) == ["boston_tiles", "middlesex_ma", "nd_quad@2014", "nd_quad@2020"]
    assert reg["nd_quad@2020"].rasters == ["/data/naip/nd_2020.tif"] and reg["nd_quad@2020"].year == 2020
    assert reg["boston_tiles"].tiles.crs == "EPSG:26919"
    county = County("town", "Town", ["a.tif", "b.tif"], bounds=(-71.5, 42.3, -71.0, 42.6), year=2018)
    back = parse_registry(render_registry({"town": county}), "rendered.yaml")["town"]
    assert (back.name, back.rasters, back.bounds, back.year) == (county.name, county.rasters, county.bounds, 2018)


# --- tile summaries: every row checked, with its line number ----------------------------------------------
HEADER = "filename,left,bottom,right,top\n"


@pytest.mark.parametrize("rows,crs,message", [
    ("a.png,0,0,224,224\nb.png,224,0,448,224\na.png,448,0,672,224\n", None,
     "line 4: filename 'a.png' is already on line 2"),
    ("a.png,0,0,224,224\n./a.png,224,0,448,224\n", None, "line 3: filename './a.png' is already on line 2"),
    ("a.png,0,0,224,224\n../secret.png,224,0,448,224\n", None, "line 3: filename '../secret.png' climbs out"),
    ("/etc/passwd,0,0,224,224\n", None, "line 2: filename '/etc/passwd' is an absolute path"),
    ("a.png,0,0,inf,224\n", None, "line 2: right is 'inf', not a finite number"),
    ("a.png,-inf,0,224,224\n", None, "line 2: left is '-inf', not a finite number"),
    ("a.png,-71.1,42.3,-71.09,42.31\nb.png,305224,4720000,305448,4720224\n", "EPSG:4326",
     "line 3: bounds .* are outside \\[-180, 180\\] x \\[-90, 90\\], but EPSG:4326 is a geographic CRS"),
], ids=["duplicate", "duplicate_dot", "dotdot", "absolute", "inf", "minus_inf", "metres_in_degrees"])
def test_tile_summary_rejects_bad_rows_with_their_line_number(rows, crs, message):
    with pytest.raises(CountyError, match=f"tile summary s.csv, {message}"):
        parse_tile_summary(HEADER + rows, "s.csv", crs=crs)


def test_tile_summary_accepts_metres_in_a_projected_crs_and_degrees_in_a_geographic_one():
    metres = HEADER + "a.png,305224,4720000,305448,4720224\nsub/b.png,305448,4720000,305672,4720224\n"
    assert len(parse_tile_summary(metres, "s.csv", crs="EPSG:26919")) == 2
    assert len(parse_tile_summary(metres, "s.csv")) == 2  # the old call (no CRS) still works
    degrees = HEADER + "a.png,-71.1,42.3,-71.09,42.31\n"
    assert parse_tile_summary(degrees, "s.csv", crs="EPSG:4326")["left"].iloc[0] == -71.1
    with pytest.raises(CountyError, match="line 2: bounds are not a rectangle"):
        parse_tile_summary(HEADER + "a.png,0,5,224,5\n", "s.csv", crs="EPSG:26919")


# --- ``make run``: the registry and its summaries are checked before any training --------------------------
def _make_run(tmp_path: Path, registry: str) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "counties.yaml").write_text(registry)
    env = {**os.environ, "AERIAL_DATA_ROOT": str(tmp_path / "root"), "AERIAL_COUNTIES": str(tmp_path / "counties.yaml"),
           "AERIAL_TRAINING_TILES": str(tmp_path / "no_tiles_here"), "AERIAL_DEPLOYMENT": "local",
           "PYSPARK_PYTHON": sys.executable}
    for name in ("DAGSTER_HOME", "SPARK_REMOTE"):
        env.pop(name, None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", "--preset", "fast", "--backbones", "mobilenet_v2",
                           "--algorithms", "logistic_regression"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    return done, time.monotonic() - started


def _assert_one_line_config_error(done: subprocess.CompletedProcess, elapsed: float, fragment: str) -> None:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "==> materializing" not in done.stdout  # nothing ran: no catalog, no training
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("make run: configuration error:")]
    assert len(errors) == 1 and fragment in errors[0], done.stderr[-3000:]
    assert elapsed < 120  # seconds (imports and definitions), not the hour of training that came first


@pytest.mark.slow  # a real make run process
def test_make_run_stops_on_a_registry_typo_before_training(tmp_path):
    done, elapsed = _make_run(tmp_path, "counties:\n  town:\n    raster: [/data/town.tif]\n")
    _assert_one_line_config_error(done, elapsed, "county 'town' in")
    assert "unknown key 'raster' (did you mean 'rasters'?)" in done.stderr


@pytest.mark.slow  # a real make run process
def test_make_run_stops_on_metre_bounds_under_a_degree_crs_before_training(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    pd.DataFrame([{"filename": "t0.png", "left": 305224, "bottom": 4720000, "right": 305448, "top": 4720224}]).to_csv(
        folder / "tile_summaries.csv", index=False)
    registry = yaml.safe_dump({"counties": {"boston": {"tiles": {
        "folder": str(folder), "summary": str(folder / "tile_summaries.csv"), "crs": "EPSG:4326"}}}})
    done, elapsed = _make_run(tmp_path, registry)
    _assert_one_line_config_error(done, elapsed, "tile_summaries.csv, line 2: bounds (305224, 4720000, 305448, "
                                                 "4720224) are outside [-180, 180] x [-90, 90]")


# --- decompression bombs: one pixel limit for every decoder, checked from the header ----------------------
def _zlib_tiff_bomb(side: int) -> bytes:
    """A ``side`` x ``side`` uint8 zlib TIFF of zeros, written tile by tile (never the whole array)."""
    tile = np.zeros((512, 512), np.uint8)
    count = (-(-side // 512)) ** 2
    buf = io.BytesIO()
    tifffile.imwrite(buf, data=(tile for _ in range(count)), shape=(side, side), dtype=np.uint8, tile=(512, 512),
                     compression="zlib")
    return buf.getvalue()


def _png_bomb(side: int) -> bytes:
    """A ``side`` x ``side`` 8-bit grayscale PNG of zeros, compressed row by row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(side + 1)  # filter byte 0, then the row
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _refused_quickly_without_allocating(data: bytes) -> ImageDecodeError:
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ImageDecodeError, match=f"over the limit of {MAX_IMAGE_PIXELS:,} pixels") as caught:
            decode(data)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB allocated: the image was decoded"
    assert elapsed < 5
    return caught.value


def test_the_pixel_limit_is_pillows():
    assert MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS


def test_zlib_tiff_bomb_is_refused_from_its_header():
    data = _zlib_tiff_bomb(20_000)  # 400 Mpx, 1.2 GB as RGB
    assert len(data) < 2 << 20
    error = _refused_quickly_without_allocating(data)
    assert "20000 x 20000 px" in str(error)
    for entry in (lambda d: load_tile(d, 224), lambda d: inspect(d, 224)):  # what featurization and the catalog call
        with pytest.raises(ImageDecodeError, match="over the limit"):
            entry(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own warning, then our error
def test_png_over_the_same_limit_is_refused_though_pillow_would_only_warn():
    side = 10_000  # 100 Mpx: over Pillow's limit, under the 2x at which Pillow itself refuses
    assert MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    _refused_quickly_without_allocating(_png_bomb(side))


def test_tiff_under_the_limit_still_decodes():
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.full((300, 200, 4), 1000, np.uint16), compression="zlib")
    array, info = decode(buf.getvalue())
    assert array.shape == (300, 200, 3) and (info.width, info.height, info.bands) == (200, 300, 4)
