"""Names inside users' files stay where the file is: STAC hrefs, tile names of a summary CSV, symlinks in a tile
folder; FIFOs are never opened (they would block a reader forever)."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from aerial_assets.errors import AerialError, CountyError, StorageError
from aerial_assets.imagery.rasters import band_note, open_info
from aerial_assets.imagery.stac_catalogs import rasters_from_stac
from aerial_assets.imagery.tile_summaries import parse_tile_summary, tile_candidates
from aerial_assets.imagery.tiling import locate_tile_files
from aerial_assets.storage.confine import confine, container_of, is_within
from aerial_assets.storage.core import LocalStorage


def _tif(path: Path, bands: int = 3) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=bands, dtype="uint8", crs="EPSG:26919",
                       transform=from_origin(300000, 4700000, 1, 1)) as ds:
        ds.write(np.zeros((bands, 8, 8), "uint8"))
    return str(path)


def _item(folder: Path, href: str, name: str = "item.json") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "i", "geometry": None, "properties": {
        "datetime": "2020-06-01T00:00:00Z"}, "links": [], "assets": {"image": {
            "href": href, "type": "image/tiff; application=geotiff", "roles": ["data"]}}}
    (folder / name).write_text(json.dumps(item))
    return str(folder / name)


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_stac_hrefs_that_leave_the_catalog_are_refused_unless_allowed(tmp_path):
    secret = _tif(tmp_path / "outside" / "secret.tif")
    item = _item(tmp_path / "cat", "../outside/secret.tif")
    with pytest.raises(CountyError, match=r"names .*outside/secret.tif, outside .*cat: not read.*stac_allowed_roots"):
        rasters_from_stac(item)
    absolute = _item(tmp_path / "cat", secret, "absolute.json")
    with pytest.raises(CountyError, match="outside"):
        rasters_from_stac(absolute)
    assert [r.href for r in rasters_from_stac(item, allowed_roots=[str(tmp_path / "outside")])] == [secret]
    inside = _item(tmp_path / "cat", "./here.tif", "inside.json")
    assert rasters_from_stac(inside)[0].href == str(tmp_path / "cat" / "here.tif")


def test_stac_links_that_leave_the_catalog_are_not_followed(tmp_path):
    _item(tmp_path / "elsewhere", "./x.tif")
    (tmp_path / "cat").mkdir()
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "c", "description": "d",
               "links": [{"rel": "item", "href": "../elsewhere/item.json"}]}
    (tmp_path / "cat" / "catalog.json").write_text(json.dumps(catalog))
    with pytest.raises(CountyError, match="the STAC item link in .*catalog.json names .*elsewhere/item.json, outside"):
        rasters_from_stac(str(tmp_path / "cat" / "catalog.json"))


def test_a_remote_href_sends_no_request_unless_its_root_is_allowed(tmp_path, http_server):
    item = _item(tmp_path / "cat", f"{http_server}/remote.tif")
    with pytest.raises(CountyError, match="a remote location: not read"):
        rasters_from_stac(item)
    assert _Recorder.requests == []  # refused before anything was sent
    allowed = rasters_from_stac(item, allowed_roots=[f"{http_server}/"])
    assert allowed[0].href == f"{http_server}/remote.tif"


def test_containment_rules():
    assert is_within("az://c/a/b.tif", "az://c") and is_within("az://c/a/../b.tif", "az://c/")
    assert not is_within("az://other/b.tif", "az://c") and not is_within("az://c2/b.tif", "az://c")
    assert not is_within("/data/catalog2/x.tif", "/data/catalog")
    assert container_of("az://c/deep/catalog.json") == "az://c"
    with pytest.raises(StorageError, match="list its prefix in SETTING"):
        confine("https://host/x.tif", ["/data"], "a file", "SETTING")


def _fifo(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return str(path)


def _within_seconds(fn, seconds: float = 10.0):
    """Run ``fn`` in a thread: a FIFO that is opened blocks forever, which must fail the test, not hang it."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked: the FIFO was opened"
    return outcome


def test_a_fifo_is_never_opened_as_a_raster_or_a_tile(tmp_path):
    fifo = _fifo(tmp_path / "f.tif")
    outcome = _within_seconds(lambda: open_info(fifo))
    assert isinstance(outcome.get("error"), AerialError)
    assert "not a regular file (a FIFO" in str(outcome["error"])
    outcome = _within_seconds(lambda: LocalStorage().read_bytes(fifo))
    assert isinstance(outcome.get("error"), StorageError)


def test_tile_names_are_found_in_subfolders_then_by_base_name_and_links_out_are_quarantined(tmp_path):
    folder = tmp_path / "tiles"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(b"x")
    (folder / "b.png").write_bytes(b"x")  # named "old/b.png" in the summary: found by its base name
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.png").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere" / "c.png", folder / "c.png")
    _fifo(folder / "d.png")
    names = ["sub/a.png", "old/b.png", "c.png", "d.png", "missing.png"]
    uris, reasons = locate_tile_files(names, str(folder))
    assert uris[:2] == [str(folder / "sub" / "a.png"), str(folder / "b.png")]
    assert reasons[:2] == ["", ""]
    assert "symlink to" in reasons[2] and "outside the tile folder" in reasons[2]
    assert "follow_external_links: true" in reasons[2]
    assert reasons[3].startswith("not a regular file")
    assert uris[4] == str(folder / "missing.png") and reasons[4] == ""  # scoring says there is no such file
    followed, reasons = locate_tile_files(names, str(folder), follow_external_links=True)
    assert reasons[2] == "" and followed[2] == str(folder / "c.png")
    listed, reasons = locate_tile_files(names[:2], "az://c/tiles", listed={"sub/a.png", "b.png"})
    assert listed == ["az://c/tiles/sub/a.png", "az://c/tiles/b.png"] and reasons == ["", ""]


def test_summary_names_relative_to_the_folder_are_kept_in_both_layouts():
    degrees = "filename,llcrnrlat,llcrnrlon,urcrnrlat,urcrnrlon\nsub/a.png,42.3,-71.1,42.31,-71.09\n" \
              "/data/tiles/b.png,42.3,-71.09,42.31,-71.08\n"
    assert parse_tile_summary(degrees, "s.csv")["filename"].tolist() == ["sub/a.png", "b.png"]
    assert tile_candidates("sub/a.png") == ["sub/a.png", "a.png"] and tile_candidates("a.png") == ["a.png"]


def test_bands_that_tiling_ignores_are_named():
    assert "band 2 is ignored" in band_note(2)
    assert band_note(1) == band_note(3) == band_note(4) == ""
    assert "bands 4-6 are ignored" in band_note(6)
