"""The original sample's tile summaries (corners in degrees) and maps of cells that are not square (issue #16).

Middlesex's original grid is 313 x 347 tiles of about 0.002015 deg of latitude by 0.00273 deg of longitude: a map
that took the tile width as the cell of both axes put 28,454 of its 108,611 tiles on a cell already taken.
"""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from PIL import Image

from aerial_assets.errors import CountyError
from aerial_assets.imagery import demo_data
from aerial_assets.imagery.counties import parse_registry
from aerial_assets.imagery.rasters import MapGrid, map_grid
from aerial_assets.imagery.tile_summaries import parse_tile_summary
from aerial_assets.imagery.tiling import file_tile_rows
from aerial_assets.maps.map_cells import grid_of, paint, with_cells
from aerial_assets.maps.rendering import cell_label

DEG_HEADER = "filename,llcrnrlat,llcrnrlon,urcrnrlat,urcrnrlon\n"
ROWS, COLS = 30, 35
DLAT, DLON = 0.002015, 0.00273
LON0, LAT0 = -71.3, 42.45  # the top-left corner, near Middlesex


def _degree_summary(rows: int = ROWS, cols: int = COLS, prefix: str = "/data/middlesex/tiles/") -> str:
    """The original layout: one line per tile, corners in degrees, a path in ``filename``; rows shuffled."""
    lines = []
    for r in range(rows):
        for c in range(cols):
            top, left = LAT0 - r * DLAT, LON0 + c * DLON
            lines.append(f"{prefix}tile_{r}_{c}.png,{top - DLAT!r},{left!r},{top!r},{left + DLON!r}\n")
    np.random.default_rng(0).shuffle(lines)
    return DEG_HEADER + "".join(lines)


# --- parsing the original layout --------------------------------------------------------------------------
def test_original_layout_is_read_in_degrees_with_the_path_cut_to_the_base_name():
    text = DEG_HEADER + "/data/tiles/a.png,42.3,-71.1,42.302015,-71.09727\nC:\\tiles\\b.png,42.3,-71.09727,42.302015,-71.09454\n"
    frame = parse_tile_summary(text, "s.csv")
    assert list(frame.columns) == ["filename", "left", "bottom", "right", "top"]
    assert frame["filename"].tolist() == ["a.png", "b.png"]
    assert frame.iloc[0][["left", "bottom", "right", "top"]].tolist() == [-71.1, 42.3, -71.09727, 42.302015]
    assert len(parse_tile_summary(text, "s.csv", crs="EPSG:4269")) == 2  # another geographic CRS: accepted


@pytest.mark.parametrize("rows,crs,message", [
    ("a.png,42.3,-71.1,42.31,-71.09\nb.png,42.3,x,42.31,-71.08\n", None, "line 3: llcrnrlon is 'x', not a number"),
    ("a.png,42.3,-71.1,42.31,-71.09\nb.png,42.3,-71.0,42.31,-71.08\n", None,
     "line 3: bounds are not a rectangle \\(need llcrnrlon < urcrnrlon"),
    ("a.png,42.3,-71.1,42.31,-71.09\nb.png,4720000,305224,4720224,305448\n", None,
     "line 3: bounds .* are outside \\[-180, 180\\] x \\[-90, 90\\], but EPSG:4326 is a geographic CRS"),
    ("/x/a.png,42.3,-71.1,42.31,-71.09\n/y/a.png,42.3,-71.09,42.31,-71.08\n", None,
     "line 3: filename 'a.png' is already on line 2"),
    ("a.png,42.3,-71.1,42.31,-71.09\ntiles/..,42.3,-71.09,42.31,-71.08\n", None, "line 3: filename 'tiles/..' names no"),
    ("a.png,42.3,-71.1,42.31,-71.09\n", "EPSG:26919", "has corners in degrees .* 'EPSG:26919', a projected CRS"),
], ids=["not_a_number", "empty", "metres", "same_base_name", "no_file", "projected_crs"])
def test_original_layout_errors_name_the_line(rows, crs, message):
    with pytest.raises(CountyError, match=f"tile summary s.csv(, | ){message}"):
        parse_tile_summary(DEG_HEADER + rows, "s.csv", crs=crs)


def test_a_summary_of_neither_layout_names_both():
    with pytest.raises(CountyError, match="lacks column.*urcrnrlon.*left, bottom, right, top.*llcrnrlat"):
        parse_tile_summary("filename,llcrnrlat,llcrnrlon,urcrnrlat\na.png,1,2,3\n", "s.csv")


def test_registry_tiles_without_crs_are_degrees_and_a_bad_crs_is_explained():
    reg = parse_registry("counties: {mx: {tiles: {folder: /t, summary: /t/s.csv}}}", "r.yaml")
    assert reg["mx"].tiles.crs == "EPSG:4326"
    reg = parse_registry("counties: {b: {tiles: {folder: /t, summary: /t/s.csv, crs: 'EPSG:26919'}}}", "r.yaml")
    assert reg["b"].tiles.crs == "EPSG:26919"
    with pytest.raises(CountyError, match="'tiles' needs summary$"):
        parse_registry("counties: {a: {tiles: {folder: /x}}}", "r.yaml")
    with pytest.raises(CountyError, match="tiles crs must be a CRS name"):
        parse_registry("counties: {a: {tiles: {folder: /x, summary: /x/s.csv, crs: ''}}}", "r.yaml")


# --- a degree grid of the original's shape: one tile per map cell ------------------------------------------
def test_degree_grid_rows_and_cells_are_per_axis_without_collisions():
    summary = parse_tile_summary(_degree_summary(), "s.csv")
    rows = file_tile_rows(summary, "/data/middlesex", "mx", "EPSG:4326")
    assert rows[["row", "col"]].drop_duplicates().shape[0] == ROWS * COLS
    assert rows["row"].max() == ROWS - 1 and rows["col"].max() == COLS - 1
    truth = rows["raster_uri"].str.extract(r"tile_(\d+)_(\d+)\.png").astype(int)
    assert (rows["row"].to_numpy() == truth[0].to_numpy()).all() and (rows["col"].to_numpy() == truth[1].to_numpy()).all()
    assert np.allclose(rows["lon"], (rows["left"] + rows["right"]) / 2)  # EPSG:4326 in, lon/lat out unchanged

    grid = map_grid(rows["left"], rows["right"], rows["bottom"], rows["top"])
    assert (grid.rows, grid.cols) == (ROWS, COLS)
    assert grid.cell_x == pytest.approx(DLON) and grid.cell_y == pytest.approx(DLAT) and not grid.square
    r, c = grid.cells(rows["left"], rows["top"])
    assert len(set(zip(r.tolist(), c.tolist(), strict=True))) == ROWS * COLS
    painted = np.full((grid.rows, grid.cols), 255, np.uint8)
    painted[r, c] = 1
    assert (painted == 1).all()
    transform = grid.transform
    assert transform.a == pytest.approx(DLON) and transform.e == pytest.approx(-DLAT)
    assert grid.extent == pytest.approx((LON0, LON0 + COLS * DLON, LAT0 - ROWS * DLAT, LAT0))
    with pytest.raises(ValueError, match="not square"):
        grid.cell  # noqa: B018 - a non-square grid has no single cell size


def test_square_grids_read_as_before():
    grid = MapGrid(305000.0, 4720000.0, 224.0, 5, 6)
    assert grid.cell == grid.cell_x == grid.cell_y == 224.0 and grid.square
    assert cell_label(224.0, "EPSG:26919") == "cell = one 224 m tile"
    assert cell_label((DLON, DLAT), "EPSG:4326") == "cell = one 0.00273 x 0.002015 deg (lon x lat) tile"


def test_spark_grid_of_with_cells_and_paint_on_a_degree_grid(spark):
    summary = parse_tile_summary(_degree_summary(), "s.csv")
    rows = file_tile_rows(summary, "/data/middlesex", "mx", "EPSG:4326")
    rows["value"] = ((rows["row"] + rows["col"]) % 6).astype("int32")
    df = spark.createDataFrame(rows[["tile_id", "left", "bottom", "right", "top", "value"]])
    grid = grid_of(df)
    assert (grid.rows, grid.cols) == (ROWS, COLS)
    assert grid.cell_x == pytest.approx(DLON, rel=1e-6) and grid.cell_y == pytest.approx(DLAT, rel=1e-6)
    cells = with_cells(df, grid)
    assert cells.select("r", "c").distinct().count() == ROWS * COLS
    painted = paint(cells, grid, "value", 255)
    assert painted.shape == (ROWS, COLS) and (painted != 255).all()
    expected = (np.arange(ROWS)[:, None] + np.arange(COLS)[None, :]) % 6
    assert (painted == expected).all()


# --- through the graph: a folder of PNG tiles and the original summary -------------------------------------
def test_original_summary_through_tiles_predictions_and_map(graph_run, tmp_path):
    from aerial_assets_tests.imagery.test_counties import COUNTY_ASSETS, _add, _register, _runner

    rows, cols = 3, 4
    rng = np.random.default_rng(7)
    for r in range(rows):
        for c in range(cols):
            label = demo_data.DEMO_CLASSES[(r * cols + c) % len(demo_data.DEMO_CLASSES)]
            Image.fromarray(demo_data.paint_tile(label, rng, 64)).save(tmp_path / f"tile_{r}_{c}.png")
    (tmp_path / "tile_summaries.csv").write_text(_degree_summary(rows, cols, prefix="/original/run/"))
    _register(graph_run, {"degrees": {"tiles": {"folder": str(tmp_path),
                                                "summary": str(tmp_path / "tile_summaries.csv")}}})
    _add(graph_run, ["degrees"])
    assert _runner(graph_run).run(COUNTY_ASSETS, "degrees")
    root = graph_run["root"]
    with rasterio.open(root / "county_land_use_map" / "degrees" / "land_use.tif") as ds:
        assert ds.shape == (rows, cols) and ds.crs.to_epsg() == 4326
        assert ds.transform.a == pytest.approx(DLON, rel=1e-6) and ds.transform.e == pytest.approx(-DLAT, rel=1e-6)
        assert (ds.read(1) != 255).all()  # every cell holds its own tile
    summary = json.loads((root / "county_land_use_map" / "degrees" / "summary.json").read_text())
    assert summary["grid"] == [rows, cols] and "cell_m" not in summary
    assert summary["cell_x"] == pytest.approx(DLON, rel=1e-6) and summary["cell_y"] == pytest.approx(DLAT, rel=1e-6)
    parts = sorted((root / "county_predictions" / "degrees" / "predictions.parquet").glob("*.parquet"))
    geo = json.loads(pq.read_schema(parts[0]).metadata[b"geo"])
    assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    preds = pd.concat(pq.read_table(p).to_pandas() for p in parts)
    assert len(preds) == rows * cols and (preds["status"] == "ok").all()
