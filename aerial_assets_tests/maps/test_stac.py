"""STAC: Items for the land-use maps and prediction datasets, and STAC catalogs as a county's imagery.

Fast (no Spark): small seeded GeoTIFFs in UTM 15N written here. Items are validated against the STAC core schema
that pystac ships; the extensions' schemas are not shipped and no test downloads anything (any http read by
pystac fails here), so the extension fields are asserted one by one instead.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pystac
import pytest
import rasterio
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from aerial_assets.errors import CountyError
from aerial_assets.imagery.counties import County, parse_registry, render_registry, resolve_county
from aerial_assets.imagery.rasters import MapGrid, open_info, write_class_geotiff
from aerial_assets.imagery.stac_catalogs import rasters_from_stac, resolve_href
from aerial_assets.maps.stac import (
    LAND_USE_ASSET,
    PARQUET_MEDIA_TYPE,
    geoparquet_item,
    lonlat_bbox,
    raster_item,
    write_item,
)
from aerial_assets_tests.storage.test_azure import azurite  # noqa: F401 - the Azurite fixture (starts only where used)

CRS = "EPSG:32615"  # UTM 15N: Iowa
ORIGIN = (440_000.0, 4_660_000.0)
CLASSES = ["Barren", "Cultivated", "Open water"]
COLOURS = [(200, 180, 150), (240, 220, 90), (30, 90, 200)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """pystac reads schemas and links over http when it lacks them: make any such read fail loudly here."""
    def refuse(self, href: str) -> str:
        if href.startswith(("http://", "https://")):
            raise AssertionError(f"test tried to download {href}")
        return original(self, href)

    original = pystac.stac_io.DefaultStacIO.read_text_from_href
    monkeypatch.setattr(pystac.stac_io.DefaultStacIO, "read_text_from_href", refuse)


def _valid_core(item: pystac.Item) -> None:
    data = item.to_dict(include_self_link=False)
    assert JsonSchemaSTACValidator().validate_core(data, pystac.STACObjectType.ITEM, data["stac_version"])


def _land_use_tif(path, rows=4, cols=5, seed=0) -> str:
    grid = np.random.default_rng(seed).integers(0, len(CLASSES), (rows, cols)).astype(np.uint8)
    grid[0, 0] = 255
    write_class_geotiff(str(path), grid, MapGrid(ORIGIN[0], ORIGIN[1], 224.0, rows, cols), CRS, COLOURS, 255)
    return str(path)


def _image_tif(path, seed: int, col: int = 0) -> str:
    """A 3-band 64 x 64 px image at 2 m, the col-th of a row of images."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs=CRS,
                       transform=from_origin(ORIGIN[0] + col * 128, ORIGIN[1], 2.0, 2.0)) as dst:
        dst.write(data)
    return str(path)


def _stac_item(item_id: str, href: str, when: str | None, **props) -> pystac.Item:
    """An item as a NAIP catalog has them: a COG asset ``image`` (role data) and a PNG thumbnail."""
    with rasterio.open(href) as ds:
        bbox = list(transform_bounds(ds.crs, "EPSG:4326", *ds.bounds))
    geometry = {"type": "Polygon", "coordinates": [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]],
                                                    [bbox[0], bbox[3]], [bbox[0], bbox[1]]]]}
    item = pystac.Item(item_id, geometry, bbox, pystac.utils.str_to_datetime(when) if when else None, props)
    item.add_asset("thumbnail", pystac.Asset(href + ".png", media_type=pystac.MediaType.PNG, roles=["thumbnail"]))
    item.add_asset("image", pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
    return item


def _catalog(root, items: list[pystac.Item]) -> str:
    """A self-contained catalog (relative links and asset hrefs) at ``root/catalog.json``."""
    catalog = pystac.Catalog("naip", "NAIP tiles of a test county")
    for item in items:
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog.json")


# --- items for the outputs -----------------------------------------------------------------------------------
def test_raster_item_describes_footprint_grid_classes_and_vintage(tmp_path):
    tif = _land_use_tif(tmp_path / "land_use.tif")
    item = raster_item(tif, "story-land_use", 2019, {"aerial:model_id": "m-1", "aerial:county": "story"}, CLASSES,
                       overview_png=str(tmp_path / "land_use.png"))
    _valid_core(item)
    with rasterio.open(tif) as ds:
        expected = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
        assert item.properties["proj:transform"] == list(ds.transform)[:6]
    assert item.bbox == pytest.approx(list(expected)) and -94 < item.bbox[0] < -93 and 42 < item.bbox[1] < 42.2
    assert item.geometry["type"] == "Polygon" and item.geometry["coordinates"][0][0] == pytest.approx(item.bbox[:2])
    assert item.properties["proj:code"] == CRS and item.properties["proj:shape"] == [4, 5]
    assert item.properties["proj:bbox"] == [ORIGIN[0], ORIGIN[1] - 4 * 224, ORIGIN[0] + 5 * 224, ORIGIN[1]]
    assert item.datetime == datetime(2019, 1, 1, tzinfo=UTC)
    assert item.common_metadata.start_datetime.year == item.common_metadata.end_datetime.year == 2019
    assert item.properties["aerial:model_id"] == "m-1"
    asset = item.assets[LAND_USE_ASSET]
    assert asset.media_type == pystac.MediaType.COG and asset.roles == ["data"]
    assert item.assets["overview"].media_type == pystac.MediaType.PNG
    classes = asset.extra_fields["classification:classes"]
    assert [(c["value"], c["name"], c["title"]) for c in classes] == [
        (0, "Barren", "Barren"), (1, "Cultivated", "Cultivated"), (2, "Open_water", "Open water"),
        (255, "nodata", "No data")]
    assert classes[2]["color_hint"] == "1E5AC8" and classes[3]["nodata"] is True
    assert any("classification" in e for e in item.stac_extensions)
    assert any("projection/v2" in e for e in item.stac_extensions)

    path = tmp_path / "land_use.stac.json"
    write_item(item, str(path))
    written = json.loads(path.read_text())
    assert written["assets"]["land_use"]["href"] == "./land_use.tif"
    assert written["assets"]["overview"]["href"] == "./land_use.png"
    assert item.assets[LAND_USE_ASSET].href == tif  # the item itself is unchanged
    back = pystac.Item.from_file(str(path))
    assert back.assets[LAND_USE_ASSET].get_absolute_href() == tif
    # and it can be read back as a county's imagery, year and all
    [raster] = rasters_from_stac(str(path))
    assert (raster.href, raster.year, raster.asset_key) == (tif, 2019, LAND_USE_ASSET)


def test_raster_item_without_a_year_is_dated_by_the_run_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative data root (the default ./.aerial_data)
    before = datetime.now(UTC).replace(microsecond=0)
    item = raster_item(_land_use_tif("m.tif"), "m", None, {}, CLASSES)
    _valid_core(item)
    start, end = item.common_metadata.start_datetime, item.common_metadata.end_datetime
    assert item.datetime is None and start == end and before <= start <= datetime.now(UTC)
    write_item(item, "out/m.stac.json")
    assert json.loads((tmp_path / "out" / "m.stac.json").read_text())["assets"]["land_use"]["href"] == "./m.tif"
    dated = raster_item(_land_use_tif(tmp_path / "d.tif"), "d", datetime(2021, 6, 3, 10, 30), {}, CLASSES)
    assert dated.datetime == datetime(2021, 6, 3, 10, 30, tzinfo=UTC)


def test_geoparquet_item_lists_the_columns_and_the_crs(tmp_path):
    native = [ORIGIN[0], ORIGIN[1] - 896, ORIGIN[0] + 1120, ORIGIN[1]]
    bbox = lonlat_bbox(native, CRS)
    schema = pa.schema([("tile_id", pa.string()), ("predicted_label", pa.string()), ("prob_Barren", pa.float64())])
    dataset = tmp_path / "predictions.parquet"
    dataset.mkdir()
    item = geoparquet_item(str(dataset), "story-predictions", bbox, CRS, 2019, {"aerial:model_id": "m-1"},
                           schema=schema, row_count=20, native_bbox=native)
    _valid_core(item)
    assert item.bbox == pytest.approx(list(bbox)) and item.properties["proj:code"] == CRS
    assert item.properties["proj:bbox"] == native and item.datetime.year == 2019
    asset = item.assets["predictions"]
    assert asset.media_type == PARQUET_MEDIA_TYPE == "application/vnd.apache.parquet" and asset.roles == ["data"]
    columns = item.properties["table:columns"]
    assert [c["name"] for c in columns] == ["tile_id", "predicted_label", "prob_Barren", "geometry"]
    assert columns[2]["type"] == "double" and item.properties["table:primary_geometry"] == "geometry"
    assert item.properties["table:row_count"] == 20
    write_item(item, str(tmp_path / "predictions.stac.json"))
    assert json.loads((tmp_path / "predictions.stac.json").read_text())["assets"]["predictions"]["href"] == \
        "./predictions.parquet"

    empty = geoparquet_item(str(dataset), "empty", None, "EPSG:26919", None, {})  # a county with no tile
    _valid_core(empty)
    assert empty.geometry is None and empty.bbox is None and "table:columns" not in empty.properties


# --- STAC as a county's imagery ------------------------------------------------------------------------------
def test_a_catalog_of_one_year_registers_a_county(tmp_path):
    a = _image_tif(str(tmp_path / "imagery" / "a.tif"), seed=1)
    b = _image_tif(str(tmp_path / "imagery" / "b.tif"), seed=2, col=1)
    catalog = _catalog(tmp_path / "stac", [_stac_item("a", a, "2019-07-04T16:00:00Z"),
                                            _stac_item("b", b, "2019-08-20T16:00:00Z")])
    item_json = json.loads((tmp_path / "stac" / "a" / "a.json").read_text())
    assert item_json["assets"]["image"]["href"] == "../../imagery/a.tif"  # relative, as published catalogs are
    assert all(not os.path.isabs(link["href"]) for link in json.loads(open(catalog).read())["links"])

    confined = parse_registry(f"counties: {{story: {{stac: {catalog}}}}}", "reg.yaml")["story"]
    with pytest.raises(CountyError, match=r"asset 'image', names .*imagery/a.tif, outside .*stac: not read.*"
                                          r"stac_allowed_roots"):
        resolve_county(confined)  # the imagery sits beside the catalog's folder: only where the user allows it
    registry = parse_registry(f"counties:\n  story:\n    name: Story County\n    stac: {catalog}\n"
                              f"    stac_allowed_roots: [{tmp_path / 'imagery'}]\n", "reg.yaml")
    county = registry["story"]
    assert county.stac == catalog and county.rasters == [] and county.year is None  # nothing read yet
    resolved = resolve_county(county)
    assert resolved.rasters == [a, b] and resolved.year == 2019 and resolved.name == "Story County"
    assert resolve_county(resolved) is resolved and resolve_county(County("x", "x", ["r.tif"])).rasters == ["r.tif"]
    assert [open_info(uri).crs for uri in resolved.rasters] == [CRS, CRS]
    assert parse_registry(render_registry({"story": county}), "r")["story"] == county

    allowed = f"stac_allowed_roots: [{tmp_path}]"
    agreeing = parse_registry(f"counties: {{story: {{stac: {catalog}, year: 2019, {allowed}}}}}", "reg.yaml")["story"]
    assert resolve_county(agreeing).year == 2019
    disagreeing = parse_registry(f"counties: {{story: {{stac: {catalog}, year: 2018, {allowed}}}}}",
                                 "reg.yaml")["story"]
    with pytest.raises(CountyError, match=r"'story'.*'year: 2018' but 2 item\(s\) are of another date: a \(2019-07-04\)"):
        resolve_county(disagreeing)


def test_an_item_collection_and_a_single_item(tmp_path):
    a = _image_tif(str(tmp_path / "img" / "a.tif"), seed=3)
    b = _image_tif(str(tmp_path / "img" / "b.tif"), seed=4, col=1)
    items = [_stac_item("a", a, "2020-05-01T00:00:00Z"), _stac_item("b", b, "2020-06-01T00:00:00Z")]
    for item in items:  # hrefs relative to the collection's file
        for asset in item.assets.values():
            asset.href = os.path.relpath(asset.href, tmp_path / "search")
    collection = tmp_path / "search" / "items.json"
    collection.parent.mkdir()
    pystac.ItemCollection(items).save_object(dest_href=str(collection))
    assert json.loads(collection.read_text())["type"] == "FeatureCollection"
    with pytest.raises(CountyError, match="outside"):
        rasters_from_stac(str(collection))  # ../img is outside search/
    rasters = rasters_from_stac(str(collection), allowed_roots=[str(tmp_path / "img")])
    assert [(r.href, r.item_id, r.year, r.asset_key) for r in rasters] == [(a, "a", 2020, "image"),
                                                                           (b, "b", 2020, "image")]
    assert rasters[0].datetime == datetime(2020, 5, 1, tzinfo=UTC)

    single = tmp_path / "single.json"
    single.write_text(json.dumps(_stac_item("c", a, "2020-01-02T00:00:00Z").to_dict(include_self_link=False)))
    county = parse_registry(f"counties: {{one: {{stac: {single}, stac_asset: image}}}}", "r")["one"]
    assert resolve_county(county).rasters == [a] and resolve_county(county).year == 2020


def test_items_of_two_years_are_refused(tmp_path):
    a = _image_tif(str(tmp_path / "a.tif"), seed=5)
    b = _image_tif(str(tmp_path / "b.tif"), seed=6, col=1)
    catalog = _catalog(tmp_path / "stac", [_stac_item("a", a, "2018-07-01T00:00:00Z"),
                                            _stac_item("b", b, "2021-07-01T00:00:00Z")])
    county = parse_registry(f"counties: {{mixed: {{stac: {catalog}, stac_allowed_roots: [{tmp_path}]}}}}",
                            "reg.yaml")["mixed"]
    with pytest.raises(CountyError, match=r"county 'mixed'.*items are of 2 years \(2018: 1 \(a\); 2021: 1 \(b\)\).*"
                                          r"one entry per year"):
        resolve_county(county)


def test_a_date_range_over_two_years_needs_the_year(tmp_path):
    a = _image_tif(str(tmp_path / "a.tif"), seed=7)
    item = _stac_item("winter", a, None, start_datetime="2018-11-01T00:00:00Z", end_datetime="2019-02-28T00:00:00Z")
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    [raster] = rasters_from_stac(str(path))
    assert raster.year is None and raster.covers(2019) and raster.date_text == "2018-11-01..2019-02-28"
    with pytest.raises(CountyError, match="dated over several years: winter.*add 'year: <vintage>'"):
        resolve_county(County("w", "w", stac=str(path)))
    assert resolve_county(County("w", "w", year=2019, stac=str(path))).year == 2019


def _write_item(path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_items_without_a_geotiff_or_a_date_and_files_that_are_not_stac(tmp_path):
    a = _image_tif(str(tmp_path / "a.tif"), seed=8)
    base = _stac_item("x", a, "2019-01-01T00:00:00Z").to_dict(include_self_link=False)
    no_tiff = {**base, "assets": {"thumbnail": base["assets"]["thumbnail"],
                                  "metadata": {"href": "x.xml", "type": "application/xml", "roles": ["metadata"]}}}
    with pytest.raises(CountyError, match=r"item 'x' .* has no GeoTIFF asset \(assets: thumbnail \(image/png\), "
                                          r"metadata \(application/xml\)\)"):
        rasters_from_stac(_write_item(tmp_path / "no_tiff.json", no_tiff))
    county = County("c", "c", stac=str(tmp_path / "no_tiff.json"))
    with pytest.raises(CountyError, match=r"^county 'c' \(stac: .*no_tiff.json\): STAC item 'x'.*no GeoTIFF"):
        resolve_county(county)
    with pytest.raises(CountyError, match=r"no asset 'visual' \(stac_asset\); its assets: thumbnail"):
        rasters_from_stac(str(tmp_path / "no_tiff.json"), "visual")

    bands = {**base, "assets": {b: {**base["assets"]["image"], "href": f"{b}.tif", "roles": ["data"]}
                                for b in ("B02", "B03")}}
    with pytest.raises(CountyError, match=r"several GeoTIFF assets \(B02, B03\): name the one to tile with "
                                          r"'stac_asset: <key>'"):
        rasters_from_stac(_write_item(tmp_path / "bands.json", bands))
    assert rasters_from_stac(str(tmp_path / "bands.json"), "B03")[0].href == str(tmp_path / "B03.tif")
    untyped = {**base, "assets": {"image": {"href": "plain.tif", "roles": ["data"]},
                                  "thumbnail": base["assets"]["thumbnail"]}}
    assert rasters_from_stac(_write_item(tmp_path / "untyped.json", untyped))[0].href == str(tmp_path / "plain.tif")

    undated = {**base, "properties": {"datetime": None}}
    with pytest.raises(CountyError, match=r"item 'x' .* has no date \('datetime', or 'start_datetime' and "
                                          r"'end_datetime'\)"):
        rasters_from_stac(_write_item(tmp_path / "undated.json", undated))
    with pytest.raises(CountyError, match=r"cannot read STAC file .*missing.json"):
        rasters_from_stac(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CountyError, match="broken.json is not JSON"):
        rasters_from_stac(str(tmp_path / "broken.json"))
    with pytest.raises(CountyError, match="not a STAC Catalog, Collection, ItemCollection or Item"):
        rasters_from_stac(_write_item(tmp_path / "geojson.json", {"type": "Polygon", "coordinates": []}))
    with pytest.raises(CountyError, match="has no items"):
        rasters_from_stac(_write_item(tmp_path / "empty.json", {"type": "Catalog", "id": "e", "description": "e",
                                                                "stac_version": "1.1.0", "links": []}))
    with pytest.raises(CountyError, match=r"cannot read STAC item of .*: .*gone.json"):
        rasters_from_stac(_write_item(tmp_path / "dangling.json", {
            "type": "Catalog", "id": "d", "description": "d", "stac_version": "1.1.0",
            "links": [{"rel": "item", "href": "./gone.json"}]}))


def test_a_catalog_that_links_to_itself_or_lists_an_item_twice(tmp_path, monkeypatch):
    a = _image_tif(str(tmp_path / "a.tif"), seed=9)
    (tmp_path / "a.json").write_text(json.dumps(_stac_item("a", a, "2019-03-01T00:00:00Z")
                                                .to_dict(include_self_link=False)))
    catalog = _write_item(tmp_path / "catalog.json", {
        "type": "Catalog", "id": "loop", "description": "loop", "stac_version": "1.1.0",
        "links": [{"rel": "self", "href": "./catalog.json"}, {"rel": "child", "href": "./catalog.json"},
                  {"rel": "item", "href": "./a.json"}, {"rel": "item", "href": "a.json"}]})
    assert [r.item_id for r in rasters_from_stac(catalog)] == ["a"]
    monkeypatch.chdir(tmp_path)  # a catalog named by a relative path, as registries name rasters
    assert [r.href for r in rasters_from_stac("catalog.json")] == [a]


@pytest.mark.parametrize("href,base,expected", [
    ("./a.tif", "az://c/stac/items/x.json", "az://c/stac/items/a.tif"),
    ("../../img/a.tif", "az://c/stac/items/x.json", "az://c/img/a.tif"),
    ("/img/a.tif", "abfs://c/stac/x.json", "abfs://c/img/a.tif"),
    ("a.tif", "abfss://c@acct.dfs.core.windows.net/s/x.json", "abfss://c@acct.dfs.core.windows.net/s/a.tif"),
    ("https://naipeuwest.blob.core.windows.net/naip/a.tif", "az://c/x.json",
     "https://naipeuwest.blob.core.windows.net/naip/a.tif"),
    ("file:///data/a.tif", "/stac/x.json", "/data/a.tif"),
    ("/data/a.tif", "/stac/x.json", "/data/a.tif"),
    ("../img/a.tif", "/stac/items/x.json", "/stac/img/a.tif"),
])
def test_hrefs_resolve_against_their_json(href, base, expected):
    assert resolve_href(href, base) == expected


def test_stac_on_azure(azurite, tmp_path, monkeypatch):  # noqa: F811 - the fixture imported above
    azurite.create_container("stac")
    store = azurite.store()
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)  # as a deployment sets it
    a = _image_tif(str(tmp_path / "a.tif"), seed=10)
    with open(a, "rb") as handle:
        store.write_bytes("az://stac/imagery/a.tif", handle.read())
    item = _stac_item("a", a, "2022-09-01T00:00:00Z")
    item.assets["image"].href = "../imagery/a.tif"
    del item.assets["thumbnail"]
    store.write_text("az://stac/items/a.json", json.dumps(item.to_dict(include_self_link=False)))
    store.write_text("az://stac/catalog.json", json.dumps({
        "type": "Catalog", "id": "az", "description": "on Azure", "stac_version": "1.1.0",
        "links": [{"rel": "item", "href": "./items/a.json", "type": "application/json"}]}))
    county = resolve_county(parse_registry("counties: {blob: {stac: 'az://stac/catalog.json'}}", "r")["blob"])
    assert county.rasters == ["az://stac/imagery/a.tif"] and county.year == 2022
    assert open_info(county.rasters[0]).width == 64  # GDAL reads it through the storage layer

    with store.atomic_dir("az://stac/out") as tmp:  # as an asset writes a map and its item
        store.write_bytes(f"{tmp}/land_use.tif", open(_land_use_tif(tmp_path / "m.tif"), "rb").read())
        write_item(raster_item(f"{tmp}/land_use.tif", "m", 2022, {}, CLASSES), f"{tmp}/land_use.stac.json")
    written = json.loads(store.read_text("az://stac/out/land_use.stac.json"))
    assert written["assets"]["land_use"]["href"] == "./land_use.tif" and written["properties"]["proj:code"] == CRS
    assert rasters_from_stac("az://stac/out/land_use.stac.json")[0].href == "az://stac/out/land_use.tif"
