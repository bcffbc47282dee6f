"""Training tiles labelled from a land-cover raster: rules, reprojection, reasons, and the asset end to end."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject

from aerial_assets.errors import ConfigurationError
from aerial_assets.imagery import demo_data
from aerial_assets.imagery.raster_labels import MIXED, NODATA, LabelRule, decide, label_tiles, load_legend, parse_spec

LEGEND_FILE = Path(__file__).resolve().parents[2] / "examples" / "nlcd2011_six_classes.yaml"
TILE_PX, RES = 56, 4.0  # 224 m tiles
MIX = -1  # a tile 70 % Forest (left), 30 % Developed (right)
# NLCD codes per tile (5 rows x 6 cols); 11 = open water (unmapped), 0 = nodata.
CODES = [
    [MIX, 11, 41, 42, 21, 22],
    [41, 43, 41, 21, 23, 24],
    [82, 81, 41, 22, 21, 82],
    [81, 82, 81, 42, 21, 81],
    [41, 81, 22, 43, 82, 0],
]
ROWS, COLS = len(CODES), len(CODES[0])


@pytest.fixture(scope="module")
def legend():
    return load_legend(LEGEND_FILE.read_text(), str(LEGEND_FILE))


def _truth(legend):
    """The expected label of every tile with a single code (None where the code is unmapped or nodata)."""
    return {(r, c): legend.get(code) for r, row in enumerate(CODES) for c, code in enumerate(row) if code != MIX}


def _code_grid() -> np.ndarray:
    grid = np.zeros((ROWS * TILE_PX, COLS * TILE_PX), np.uint8)
    for r, row in enumerate(CODES):
        for c, code in enumerate(row):
            block = grid[r * TILE_PX:(r + 1) * TILE_PX, c * TILE_PX:(c + 1) * TILE_PX]
            if code == MIX:
                split = int(TILE_PX * 0.7)
                block[:, :split], block[:, split:] = 41, 21
            else:
                block[:] = code
    return grid


@pytest.fixture(scope="module")
def rasters(tmp_path_factory, legend):
    """Imagery in EPSG:26919 (6 x 5 tiles of 56 px at 4 m), the land cover on its grid (same CRS) and the
    same land cover reprojected to EPSG:4326."""
    folder = tmp_path_factory.mktemp("training_rasters")
    classes = [[demo_data.DEMO_CLASSES.index(legend.get(code, "Forest")) for code in row] for row in CODES]
    imagery = folder / "tiny.tif"
    demo_data.write_county_raster(str(imagery), rows=ROWS, cols=COLS, tile_px=TILE_PX, resolution=RES, seed=5,
                                  layout=np.array(classes, np.uint8))
    with rasterio.open(imagery) as img:
        src_crs, src_transform, width, height, bounds = img.crs, img.transform, img.width, img.height, img.bounds
    grid = _code_grid()
    profile = {"driver": "GTiff", "count": 1, "dtype": "uint8", "nodata": 0}
    utm = folder / "landcover_utm.tif"
    with rasterio.open(utm, "w", width=width, height=height, crs=src_crs, transform=src_transform, **profile) as dst:
        dst.write(grid, 1)
    transform, w, h = calculate_default_transform(src_crs, "EPSG:4326", width, height, *bounds)
    geographic = np.zeros((h, w), np.uint8)
    reproject(grid, geographic, src_transform=src_transform, src_crs=src_crs, src_nodata=0, dst_transform=transform,
              dst_crs="EPSG:4326", dst_nodata=0, resampling=Resampling.nearest)
    wgs84 = folder / "landcover_4326.tif"
    with rasterio.open(wgs84, "w", width=w, height=h, crs="EPSG:4326", transform=transform, **profile) as dst:
        dst.write(geographic, 1)
    return {"folder": folder, "imagery": imagery, "utm": utm, "wgs84": wgs84}


def _labels(rasters, legend, landcover="wgs84", **rule):
    return {(t.row, t.col): t for t in label_tiles(str(rasters["imagery"]), str(rasters[landcover]), legend, 224.0,
                                                  LabelRule(**rule))}


@pytest.mark.parametrize("rule", [{"mode": "points9"}, {"mode": "purity", "purity": 0.9}])
def test_pure_tiles_get_the_layout_labels_through_a_reprojected_landcover(rasters, legend, rule):
    tiles = _labels(rasters, legend, **rule)
    assert len(tiles) == ROWS * COLS  # nothing dropped: labelled + unlabelled = every tile
    for cell, expected in _truth(legend).items():
        if expected is not None:
            assert tiles[cell].label == expected, (cell, tiles[cell].reason)
            assert tiles[cell].reason == ""
    tile = tiles[(2, 3)]
    assert tile.tile_id == "tiny_r2_c3" and tile.crs == "EPSG:26919"
    assert tile.pixels.shape == (TILE_PX, TILE_PX, 3) and tile.pixels.dtype == np.uint8
    assert tile.right - tile.left == pytest.approx(224.0) and tile.top - tile.bottom == pytest.approx(224.0)


def test_unmapped_and_nodata_tiles_are_counted_with_their_reason(rasters, legend):
    for rule in ({"mode": "points9"}, {"mode": "purity", "purity": 0.9}):
        tiles = _labels(rasters, legend, **rule)
        assert tiles[(0, 1)].label is None and tiles[(0, 1)].reason == "unmapped code 11"
        assert tiles[(4, 5)].label is None and tiles[(4, 5)].reason == NODATA
        unlabelled = {cell for cell, t in tiles.items() if t.label is None}
        assert unlabelled == {(0, 0), (0, 1), (4, 5)}
        assert sum(t.label is not None for t in tiles.values()) + len(unlabelled) == ROWS * COLS


def test_mixed_tile_fails_points9_and_strict_purity_but_passes_purity_half(rasters, legend):
    assert _labels(rasters, legend, mode="points9")[(0, 0)].reason == MIXED
    assert _labels(rasters, legend, mode="purity", purity=0.95)[(0, 0)].reason == MIXED
    assert _labels(rasters, legend, mode="purity", purity=0.5)[(0, 0)].label == "Forest"
    # the same window decided directly: 39 of 56 columns (69.6 %) Forest codes
    codes = _code_grid()[:TILE_PX, :TILE_PX]
    valid = np.ones_like(codes, bool)
    assert decide(codes, valid, legend, LabelRule(mode="points9")) == (None, MIXED)
    assert decide(codes, valid, legend, LabelRule(mode="purity", purity=0.95)) == (None, MIXED)
    assert decide(codes, valid, legend, LabelRule(mode="purity", purity=0.5)) == ("Forest", "")
    assert decide(codes, valid, legend, LabelRule(mode="purity", purity=39 / 56)) == ("Forest", "")
    assert decide(codes, valid, legend, LabelRule(mode="purity", purity=0.7)) == (None, MIXED)
    half_missing = valid.copy()
    half_missing[: TILE_PX // 2] = False
    assert decide(np.full_like(codes, 41), half_missing, legend, LabelRule(mode="purity")) == (None, NODATA)


def test_same_crs_landcover_is_exact(rasters, legend):
    tiles = _labels(rasters, legend, landcover="utm", mode="purity", purity=1.0)
    for cell, expected in _truth(legend).items():
        assert tiles[cell].label == expected


def test_legend_and_spec_errors_are_clear(tmp_path):
    with pytest.raises(ConfigurationError, match="expected 'classes:"):
        load_legend("Forest: [41]")
    with pytest.raises(ConfigurationError, match="code 41 is under both Forest and Shrub"):
        load_legend("classes: {Forest: [41], Shrub: [41]}")
    with pytest.raises(ConfigurationError, match="code 'x' is not an integer"):
        load_legend("classes: {Forest: [x]}")
    spec = parse_spec("imagery: [a.tif]\nlandcover: lc.tif\nlegend: /abs/legend.yaml\n", str(tmp_path / "spec.yaml"))
    assert spec.imagery == [str(tmp_path / "a.tif")] and spec.landcover == str(tmp_path / "lc.tif")
    assert spec.legend == "/abs/legend.yaml"
    with pytest.raises(ConfigurationError, match="expected the keys imagery, landcover, legend"):
        parse_spec("imagery: [a.tif]", "spec.yaml")
    with pytest.raises(ValueError):
        LabelRule(mode="majority")
    from aerial_assets.defs.resources import StorageResource, TrainingRastersResource

    storage = StorageResource(data_root=str(tmp_path))
    with pytest.raises(ConfigurationError, match="set AERIAL_TRAINING_RASTERS"):
        TrainingRastersResource().load(storage)
    with pytest.raises(ConfigurationError, match="not found"):
        TrainingRastersResource(uri=str(tmp_path / "none.yaml")).load(storage)


def test_raster_labeled_tiles_feed_labeled_tiles(spark, rasters, tmp_path):
    from dagster import materialize

    from aerial_assets.defs.assets.raster_labels import raster_labeled_tiles
    from aerial_assets.defs.assets.tiles import labeled_tiles
    from aerial_assets.defs.definitions import build_defs

    spec = rasters["folder"] / "training_rasters.yaml"
    spec.write_text(f"imagery: [tiny.tif]\nlandcover: landcover_4326.tif\nlegend: {LEGEND_FILE}\n")
    root = tmp_path / "data"
    resources = build_defs({"AERIAL_DATA_ROOT": str(root), "AERIAL_TRAINING_RASTERS": str(spec)}).resources
    # Two runs, as make run does: raster_labeled_tiles is an optional upstream (no static dependency).
    first = materialize([raster_labeled_tiles], resources=resources)
    # tiles cut from rasters know their positions: the split takes whole blocks (2 x 2 tiles here)
    result = materialize([labeled_tiles], resources=resources,
                         run_config={"ops": {"labeled_tiles": {"config": {"block_size_m": 448.0}}}})
    assert first.success and result.success

    out = root / "raster_labeled_tiles"
    table = pd.read_csv(out / "tiles.csv", keep_default_na=False)
    assert len(table) == ROWS * COLS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_class"] == {"Cultivated": 9, "Developed": 9, "Forest": 9}
    assert summary["unlabelled_by_reason"] == {MIXED: 1, NODATA: 1, "unmapped code 11": 1}
    lc_sha = hashlib.sha256(rasters["wgs84"].read_bytes()).hexdigest()
    assert summary["sources"]["landcover"]["sha256"] == lc_sha
    assert (out / "tiles" / "Forest" / "tiny_r0_c2.png").exists()
    assert not (out / "tiles" / "Forest" / "tiny_r0_c0.png").exists()

    catalog = pd.read_parquet(root / "labeled_tiles" / "catalog.parquet")
    ok = catalog[catalog["status"] == "ok"]
    assert ok.groupby("label").size().to_dict() == {"Cultivated": 9, "Developed": 9, "Forest": 9}
    assert "Developed/tiny_r1_c3.png" in set(ok["tile_id"])
    assert meta_split(result) == "blocks"
    positions = pd.read_csv(out / "tiles" / "tile_positions.csv").set_index("filename")
    block = positions.apply(lambda p: (p["source"], int((p["left"] + p["right"]) / 2 // 448),
                                       int((p["bottom"] + p["top"]) / 2 // 448)), axis=1)  # by tile centre
    splits = ok.set_index("tile_id")["split"].replace("excluded", "train")
    assert splits.groupby(block.reindex(splits.index)).nunique().max() == 1  # no block straddles two splits
    meta = result.asset_materializations_for_node("labeled_tiles")[0].metadata
    assert meta["landcover_sha256"].value == lc_sha
    assert meta["training_rasters"].value == str(spec)
    rl_meta = first.asset_materializations_for_node("raster_labeled_tiles")[0].metadata
    assert rl_meta["n_labelled"].value == 27 and rl_meta["n_unlabelled"].value == 3


def meta_split(result) -> str:
    return result.asset_materializations_for_node("labeled_tiles")[0].metadata["split_strategy"].value
