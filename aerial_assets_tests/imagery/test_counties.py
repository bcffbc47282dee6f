"""Counties: registry, vintages and change, rasters of other kinds, ready-made tiles, isolation of failures."""

import json
import struct

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import yaml
from dagster import AssetKey
from PIL import Image

from aerial_assets.defs.partitions import county_partitions
from aerial_assets.defs.run import Runner
from aerial_assets.errors import CountyError
from aerial_assets.imagery import demo_data
from aerial_assets.imagery.counties import earlier_vintages, parse_registry, resolve_county
from aerial_assets.imagery.tile_summaries import parse_tile_summary
from aerial_assets.maps.change import stale_change_inputs
from aerial_assets.maps.geoparquet import rectangles_wkb
from aerial_assets.maps.spatial import plurality_smooth, transition_matrix
from aerial_assets.storage.core import LocalStorage
from aerial_assets.storage.layout import Layout

COUNTY_ASSETS = ["county_tiles", "county_predictions", "county_land_use_map"]


# --- pure ----------------------------------------------------------------------------------------
def test_registry_vintages_become_partition_keys_and_order():
    text = """
counties:
  town:
    bounds: [-71.5, 42.3, -71.0, 42.6]
    vintages: {2022: [b.tif], 2018: [a.tif], 2020: [c.tif]}
  plain: {rasters: x.tif}
"""
    reg = parse_registry(text, "registry.yaml")
    assert sorted(reg) == ["plain", "town@2018", "town@2020", "town@2022"]
    assert reg["town@2022"].rasters == ["b.tif"] and reg["town@2022"].bounds == (-71.5, 42.3, -71.0, 42.6)
    assert [c.key for c in earlier_vintages(reg, reg["town@2022"])] == ["town@2018", "town@2020"]
    assert earlier_vintages(reg, reg["plain"]) == []


@pytest.mark.parametrize("text,message", [
    ("counties: {Bad Key: {rasters: [a.tif]}}", "not valid"),
    ("counties: {a: {name: x}}", "lists no rasters"),
    ("counties: {a: {rasters: [a.tif], bounds: [1, 2, 0, 3]}}", "are empty"),
    ("counties: {a: {tiles: {folder: /x}}}", "needs summary"),
    ("counties: {a: {vintages: {soon: [a.tif]}}}", "not a year"),
    ("nothing: here", "top-level 'counties:'"),
    ("counties: {a: {rasters: [a.tif], stac: c.json}}", "has 'rasters' and 'stac': give exactly one of"),
    ("counties: {a: {tiles: {folder: /x, summary: /x/s.csv, crs: 'EPSG:26919'}, stac: c.json}}",
     "has 'tiles' and 'stac'"),
    ("counties: {a: {rasters: [a.tif], stac_asset: image}}", "has 'stac_asset' but no 'stac'"),
    ("counties: {a: {stac: [a.json, b.json]}}", "stac must be text, such as 'stac: "),
    ("counties: {a: {stac: c.json, stac_assets: image}}", "did you mean 'stac_asset'"),
])
def test_registry_errors_name_the_county_and_fix(text, message):
    with pytest.raises(CountyError, match=message):
        parse_registry(text, "registry.yaml")


def test_a_stac_entry_is_read_when_the_county_is_used_not_when_the_registry_is_parsed(tmp_path):
    missing = tmp_path / "nowhere" / "catalog.json"
    text = f"counties:\n  st: {{stac: '{missing}', stac_asset: image, year: 2019}}\n  plain: {{rasters: x.tif}}\n"
    reg = parse_registry(text, "registry.yaml")  # a catalog that cannot be read fails its own county only
    assert (reg["st"].stac, reg["st"].stac_asset, reg["st"].year, reg["st"].rasters) == (str(missing), "image", 2019, [])
    assert resolve_county(reg["plain"]) is reg["plain"]
    with pytest.raises(CountyError, match=r"county 'st' \(stac: .*catalog.json\): cannot read STAC file"):
        resolve_county(reg["st"])


def test_tile_summary_rejects_missing_columns_and_bad_bounds_with_line_number():
    with pytest.raises(CountyError, match="lacks column.*top"):
        parse_tile_summary("filename,left,bottom,right\na.png,0,0,1\n", "s.csv")
    with pytest.raises(CountyError, match="line 3: bottom is 'x'"):
        parse_tile_summary("filename,left,bottom,right,top\na.png,0,0,1,1\nb.png,1,x,2,1\n", "s.csv")
    with pytest.raises(CountyError, match="line 2: bounds are not a rectangle"):
        parse_tile_summary("filename,left,bottom,right,top\na.png,5,0,1,1\n", "s.csv")
    ok = parse_tile_summary("filename,left,bottom,right,top,extra\na.png,0,0,224,224,q\n", "s.csv")
    assert list(ok.columns) == ["filename", "left", "bottom", "right", "top"] and ok["right"].iloc[0] == 224


def test_plurality_smoothing_removes_isolated_tiles_and_keeps_nodata():
    grid = np.zeros((5, 5), np.uint8)
    grid[2, 2] = 1  # an isolated tile
    grid[0, 0] = 255  # nodata
    grid[3:, 3:] = 2  # a 2x2 block survives
    smoothed = plurality_smooth(grid, 3)
    assert smoothed[2, 2] == 0 and smoothed[0, 0] == 255 and (smoothed[3:, 3:] == 2).all()


def test_transition_matrix_counts_from_rows_to_columns():
    matrix = transition_matrix([0, 0, 1, 2], [0, 2, 2, 2], 3)
    assert matrix.tolist() == [[1, 0, 1], [0, 0, 1], [0, 0, 1]]


def test_wkb_rectangle_is_a_closed_polygon():
    (wkb,) = rectangles_wkb([10.0], [20.0], [30.0], [40.0])
    order, kind, rings, points = struct.unpack("<BIII", wkb[:13])
    coords = struct.unpack("<10d", wkb[13:])
    assert (order, kind, rings, points) == (1, 3, 1, 5)
    assert coords[:2] == coords[-2:] == (10.0, 20.0) and coords[4:6] == (30.0, 40.0)


# --- through the graph, with the champion trained by the graph_run fixture ----------------------
def _register(graph_run, entries: dict) -> None:
    registry = graph_run["root"] / "counties.yaml"
    doc = yaml.safe_load(registry.read_text())
    doc["counties"].update(entries)
    registry.write_text(yaml.safe_dump(doc))


def _add(graph_run, keys):
    graph_run["instance"].add_dynamic_partitions(county_partitions.name, keys)


def _runner(graph_run, config=None):
    return Runner(graph_run["defs"], graph_run["instance"], config or {})


@pytest.fixture(scope="module")
def vintages(graph_run, tmp_path_factory):
    """One area in two years: in the later one, a band of fields has become town."""
    folder = tmp_path_factory.mktemp("vintages")
    before = demo_data.county_layout(5, 6, seed=3)
    after = before.copy()
    after[:, 0] = demo_data.DEMO_CLASSES.index("Developed")
    paths = {}
    for year, layout in ((2018, before), (2022, after)):
        paths[year] = folder / f"town_{year}.tif"
        demo_data.write_county_raster(str(paths[year]), rows=5, cols=6, tile_px=64, resolution=3.5, seed=year,
                                      layout=layout)
    _register(graph_run, {"town": {"name": "Town", "bounds": [-71.5, 42.5, -71.3, 42.7],
                                   "vintages": {y: [str(p)] for y, p in paths.items()}}})
    keys = ["town@2018", "town@2022"]
    _add(graph_run, keys)
    # Both vintages in ONE run (a single-run backfill), then the change of the later one.
    ok = _runner(graph_run).run(COUNTY_ASSETS, partition_range=(keys[0], keys[1]))
    change_ok = _runner(graph_run).run(["county_land_use_change"], "town@2022")
    return {"ok": ok, "change_ok": change_ok, "before": before, "after": after}


def test_two_vintages_backfill_in_one_run_and_give_a_change_table(graph_run, vintages):
    assert vintages["ok"] and vintages["change_ok"]
    root = graph_run["root"]
    summary = json.loads((root / "county_land_use_change" / "town@2022" / "summary.json").read_text())
    matrix = np.array(summary["matrix"])
    assert summary["baseline"] == "town@2018" and matrix.sum() == 30
    transitions = pd.read_parquet(root / "county_land_use_change" / "town@2022" / "transitions.parquet")
    assert len(transitions) == 30
    truly_new = int((vintages["before"][:, 0] != vintages["after"][:, 0]).sum())
    assert summary["became"]["Developed"] >= truly_new - 1  # the painted new town is found
    with rasterio.open(root / "county_land_use_change" / "town@2022" / "change.tif") as ds:
        assert ds.crs.to_epsg() == 26919 and ds.shape == (5, 6)
    meta = graph_run["instance"].get_latest_materialization_event(
        AssetKey("county_land_use_change")).asset_materialization.metadata
    assert meta["became_Developed"].value == summary["became"]["Developed"]
    # the interactive change map: every compared tile, changed ones by their new class, the rest "unchanged"
    page = (root / "county_land_use_change" / "town@2022" / "change.html").read_text()
    assert meta["change_html"].value.endswith("change.html") and '"fill_label": "unchanged"' in page
    data = json.loads(page.split("var data = ", 1)[1].split(";\n", 1)[0])
    assert len(data["v"]) == 30 and sum(v >= 0 for v in data["v"]) == int(matrix.sum() - np.trace(matrix))
    assert data["f"] == ["from_label", "to_label"]


def test_predictions_are_geoparquet_with_crs_vintage_and_model(graph_run, vintages):
    folder = graph_run["root"] / "county_predictions" / "town@2022" / "predictions.parquet"
    parts = sorted(folder.glob("*.parquet"))
    geo = json.loads(pq.read_schema(parts[0]).metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 26919}
    table = pd.concat(pq.read_table(p).to_pandas() for p in parts)
    assert len(table) == 30 and set(table["vintage"]) == {2022}
    assert table["model_id"].nunique() == 1 and table["geometry"].map(len).eq(93).all()
    with rasterio.open(graph_run["root"] / "county_land_use_map" / "town@2022" / "land_use.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.colormap(1)[0][3] == 255


def test_four_band_16_bit_raster_with_nodata_tiles(graph_run, tmp_path):
    path = tmp_path / "rgbn16.tif"
    layout = demo_data.write_county_raster(str(path), rows=5, cols=6, tile_px=64, resolution=3.5, seed=3, bands=4,
                                           dtype="uint16", nodata_tiles=3)
    _register(graph_run, {"rgbn16": {"rasters": [str(path)]}})
    _add(graph_run, ["rgbn16"])
    assert _runner(graph_run).run(COUNTY_ASSETS, "rgbn16")
    root = graph_run["root"]
    counts = json.loads((root / "county_tiles" / "rgbn16" / "summary.json").read_text())["counts"]
    assert counts == {"ok": 27, "nodata": 3}
    meta = graph_run["instance"].get_latest_materialization_event(
        AssetKey("county_tiles")).asset_materialization.metadata
    assert meta["n_nodata_skipped"].value == 3
    with rasterio.open(root / "county_land_use_map" / "rgbn16" / "land_use.tif") as ds:
        grid = ds.read(1)
    scored = grid.ravel()[:27]
    # 16-bit samples are scaled back (not contrast-stretched): the painted layout is recovered
    assert (scored == layout.ravel()[:27]).mean() >= 0.8
    assert (grid.ravel()[27:] == 255).all()


def test_ready_made_tiles_with_a_summary_csv(graph_run, tmp_path):
    rng = np.random.default_rng(5)
    labels = ["Forest", "Developed", "Cultivated", "Forest", "Barren", "Developed"]
    rows = []
    for i, label in enumerate(labels):
        Image.fromarray(demo_data.paint_tile(label, rng, 64)).save(tmp_path / f"t{i}.png")
        left, top = 305_000 + 224 * (i % 3), 4_720_000 - 224 * (i // 3)
        rows.append({"filename": f"t{i}.png", "left": left, "bottom": top - 224, "right": left + 224, "top": top})
    pd.DataFrame(rows).to_csv(tmp_path / "tile_summaries.csv", index=False)
    _register(graph_run, {"tile_folder": {"tiles": {"folder": str(tmp_path), "crs": "EPSG:26919",
                                                    "summary": str(tmp_path / "tile_summaries.csv")}}})
    _add(graph_run, ["tile_folder"])
    assert _runner(graph_run).run(COUNTY_ASSETS, "tile_folder")
    folder = graph_run["root"] / "county_predictions" / "tile_folder" / "predictions.parquet"
    preds = pd.concat(pq.read_table(p).to_pandas() for p in folder.glob("*.parquet")).sort_values("tile_id")
    assert len(preds) == 6
    assert (preds["predicted_label"].to_numpy() == np.array(labels)).mean() >= 0.8
    with rasterio.open(graph_run["root"] / "county_land_use_map" / "tile_folder" / "land_use.tif") as ds:
        assert ds.shape == (2, 3)


def test_a_tile_file_missing_from_its_folder_is_quarantined_not_fatal(graph_run, tmp_path):
    """One file named in the summary but absent: the county is scored, that tile is quarantined with its reason."""
    rng = np.random.default_rng(6)
    rows = []
    for i, label in enumerate(["Forest", "Developed", "Cultivated", "Forest"]):
        if i != 2:  # t2.png is listed but never written
            Image.fromarray(demo_data.paint_tile(label, rng, 64)).save(tmp_path / f"t{i}.png")
        left, top = 305_000 + 224 * (i % 2), 4_720_000 - 224 * (i // 2)
        rows.append({"filename": f"t{i}.png", "left": left, "bottom": top - 224, "right": left + 224, "top": top})
    pd.DataFrame(rows).to_csv(tmp_path / "tile_summaries.csv", index=False)
    _register(graph_run, {"gappy": {"tiles": {"folder": str(tmp_path), "crs": "EPSG:26919",
                                              "summary": str(tmp_path / "tile_summaries.csv")}}})
    _add(graph_run, ["gappy"])
    assert _runner(graph_run).run(COUNTY_ASSETS, "gappy")
    folder = graph_run["root"] / "county_predictions" / "gappy"
    preds = pd.concat(pq.read_table(p).to_pandas() for p in (folder / "predictions.parquet").glob("*.parquet"))
    bad = preds[preds["status"] != "ok"]
    assert len(preds) == 4 and list(bad["tile_id"]) == ["gappy/t2.png"] and "t2.png" in bad["reason"].iloc[0]
    assert pd.read_csv(folder / "quarantine.csv")["tile_id"].tolist() == ["gappy/t2.png"]


def test_one_failing_county_does_not_stop_the_others(graph_run, tiny_county, tmp_path):
    raster, _ = tiny_county
    broken = tmp_path / "broken.tif"
    broken.write_text("this is not a GeoTIFF")
    _register(graph_run, {"good_a": {"rasters": [str(raster)]}, "broken": {"rasters": [str(broken)]},
                          "far_away": {"rasters": [str(raster)], "bounds": [10.0, 50.0, 11.0, 51.0]}})
    _add(graph_run, ["good_a", "broken", "far_away"])
    runner = _runner(graph_run)
    assert not runner.run(["county_tiles"], partition_range=("good_a", "far_away"))
    materialized = graph_run["instance"].get_materialized_partitions(AssetKey("county_tiles"))
    assert "good_a" in materialized and "broken" not in materialized and "far_away" not in materialized
    assert (graph_run["root"] / "county_tiles" / "good_a" / "tiles.parquet").is_dir()


def test_smoothing_is_off_by_default_and_its_effect_is_in_metadata(graph_run):
    tif = graph_run["root"] / "county_land_use_map" / "tiny" / "land_use.tif"
    assert _runner(graph_run).run(["county_land_use_map"], "tiny")  # default: raw predictions
    with rasterio.open(tif) as ds:
        raw = ds.read(1)
    runner = _runner(graph_run, {"ops": {"county_land_use_map": {"config": {"smoothing": True}}}})
    assert runner.run(["county_land_use_map"], "tiny")
    meta = graph_run["instance"].get_latest_materialization_event(
        AssetKey("county_land_use_map")).asset_materialization.metadata
    expected = plurality_smooth(raw, 6)
    assert meta["smoothing"].value is True
    assert meta["tiles_changed_by_smoothing"].value == int((expected != raw).sum())
    with rasterio.open(tif) as ds:
        np.testing.assert_array_equal(ds.read(1), expected)


def test_raster_without_crs_is_a_clear_error(tmp_path):
    from aerial_assets.imagery.rasters import open_info

    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(np.ones((3, 8, 8), np.uint8))
    with pytest.raises(CountyError, match="has no CRS: georeference it"):
        open_info(str(path))


def test_corrupt_window_is_quarantined_with_its_reason(tmp_path):
    """A damaged compressed block fails only the tiles that read it; they are kept with the reason."""
    from aerial_assets.imagery.rasters import open_info
    from aerial_assets.imagery.tiling import tile_frames

    path = tmp_path / "damaged.tif"
    demo_data.write_county_raster(str(path), rows=2, cols=2, tile_px=256, resolution=0.875, seed=1)
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))  # block (row 1, col 1) of band 1
    data = bytearray(path.read_bytes())
    data[offset + 10:offset + 400] = bytes(390)  # zero the middle of that deflate stream
    path.write_bytes(bytes(data))
    info = open_info(str(path))
    frames = tile_frames(info.to_dict(), 0, "damaged", 224.0, 0.5)(iter([pd.DataFrame({"id": [0, 1, 2, 3]})]))
    out = pd.concat(frames).set_index("tile_id")
    assert out.loc["damaged/0/1_1", "status"] == "quarantined"
    assert out.loc["damaged/0/1_1", "reason"].startswith("unreadable window")
    assert (out.drop("damaged/0/1_1")["status"] == "ok").all()


def _change_inputs_check(graph_run, key: str) -> bool:
    """Whether the latest evaluation of the change's ``county_land_use_change_inputs_current`` check passed."""
    from dagster import AssetCheckKey

    check = AssetCheckKey(AssetKey("county_land_use_change"), "county_land_use_change_inputs_current")
    record = graph_run["instance"].event_log_storage.get_latest_asset_check_execution_by_key([check])[check]
    return record.event.dagster_event.event_specific_data.passed


def test_a_rescored_baseline_vintage_marks_the_change_stale(graph_run, vintages):
    """The baseline is another partition of county_predictions, which Dagster's staleness cannot see: the
    change records the scoring runs it used, and its check compares them with the predictions stored now."""
    assert vintages["change_ok"]
    root = graph_run["root"]
    summary = json.loads((root / "county_land_use_change" / "town@2022" / "summary.json").read_text())
    before = json.loads((root / "county_predictions" / "town@2018" / "summary.json").read_text())
    assert summary["baseline_run_id"] == before["run_id"] and summary["baseline_model_id"] == before["model_id"]
    store, layout = LocalStorage(), Layout(str(root))
    assert _change_inputs_check(graph_run, "town@2022") and stale_change_inputs(store, layout, "town@2022") == ""
    assert _runner(graph_run).run(["county_predictions"], "town@2018")  # the baseline is re-scored
    problem = stale_change_inputs(store, layout, "town@2022")
    assert "county_predictions[town@2018] was re-scored" in problem and "county_land_use_change[town@2022]" in problem
    assert _runner(graph_run).run(["county_land_use_change"], "town@2022")  # recomputed: current again
    assert _change_inputs_check(graph_run, "town@2022") and stale_change_inputs(store, layout, "town@2022") == ""
