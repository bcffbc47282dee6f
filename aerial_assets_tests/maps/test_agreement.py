"""Agreement of the predicted map with a reference land-cover raster: legend, resampling onto the map grid
(another CRS, finer resolution), the numbers against a direct computation, and the asset end to end."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import yaml
from dagster import AssetKey
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

from aerial_assets.defs.partitions import county_partitions
from aerial_assets.defs.run import Runner
from aerial_assets.errors import CountyError
from aerial_assets.imagery import demo_data
from aerial_assets.imagery.counties import parse_registry
from aerial_assets.maps.agreement import (
    UNLABELLED,
    agreement,
    map_agreement,
    parse_legend,
    read_legend,
    reference_on_grid,
)
from aerial_assets.maps.spatial import plurality_smooth

CLASSES = list(demo_data.DEMO_CLASSES)  # Barren, Cultivated, Developed, Forest, Herbaceous, Shrub
LEGEND_FILE = Path(__file__).resolve().parents[2] / "examples" / "nlcd2011_six_classes.yaml"
CODES = {"Barren": [31], "Cultivated": [81, 82], "Developed": [21, 22, 23, 24], "Forest": [41, 42, 43],
         "Herbaceous": [71, 72, 73, 74], "Shrub": [51, 52]}
ONE_CODE = {"Barren": 31, "Cultivated": 82, "Developed": 22, "Forest": 41, "Herbaceous": 71, "Shrub": 52}
WATER, UNKNOWN, NODATA_CODE = 11, 99, 0
LEFT, TOP, CELL, ROWS, COLS = 305_000.0, 4_720_000.0, 224.0, 5, 6
MAP_CRS = "EPSG:26919"


def _direct(mapped: np.ndarray, reference: np.ndarray, n: int):
    """The confusion matrix, cell by cell (reference rows, mapped columns), over cells labelled in both."""
    matrix = np.zeros((n, n), int)
    for m, r in zip(mapped.ravel(), reference.ravel(), strict=True):
        if m != 255 and r != UNLABELLED:
            matrix[r, m] += 1
    return matrix


def _write(path, codes: np.ndarray, transform, crs, nodata=NODATA_CODE) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=codes.shape[1], height=codes.shape[0], count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(codes.astype(np.uint8), 1)
    return str(path)


# --- pure ------------------------------------------------------------------------------------------------------
def test_the_example_legend_groups_nlcd_2011_into_the_six_classes_and_leaves_water_and_wetlands_out():
    legend = read_legend(str(LEGEND_FILE))
    assert {name: sorted(c for c, n in legend.codes.items() if n == name) for name in CLASSES} == CODES
    assert legend.ignore == {11, 12, 90, 95} and not legend.ignore & set(legend.codes)
    assert legend.lookup(CLASSES)[82] == CLASSES.index("Cultivated")


@pytest.mark.parametrize("text,message", [
    ("nothing: 1", "must have a 'classes:' mapping"),
    ("classes: {Forest: [41], Shrub: [41]}", "code 41 is given to both"),
    ("classes: {Forest: [forest]}", "must be a list of integer codes"),
    ("classes: {Forest: [41]}\nignor: [11]", "unknown key"),
    ("classes: {Forest: [41]}\nignore: [41]", "both a class and ignored"),
])
def test_legend_errors_say_what_to_fix(text, message):
    with pytest.raises(CountyError, match=message):
        parse_legend(text, "legend.yaml")


def test_a_legend_class_the_model_does_not_have_is_an_error():
    with pytest.raises(CountyError, match="Water.*does not predict"):
        parse_legend("classes: {Forest: [41], Water: [11]}", "l.yaml").lookup(CLASSES)


def test_registry_reference_is_parsed_checked_and_rendered():
    from aerial_assets.imagery.counties import render_registry

    reg = parse_registry("counties:\n  a: {rasters: [a.tif], reference: {raster: az://lc/nlcd.tif, legend: l.yaml}}\n"
                         "  b: {vintages: {2018: [b.tif], 2020: [c.tif]}, reference: {raster: r.tif, legend: l.yaml}}\n"
                         "  c: {rasters: [c.tif]}\n", "reg.yaml")
    assert (reg["a"].reference.raster, reg["a"].reference.legend) == ("az://lc/nlcd.tif", "l.yaml")
    assert reg["b@2018"].reference == reg["b@2020"].reference and reg["c"].reference is None
    assert parse_registry(render_registry({"a": reg["a"], "c": reg["c"]}), "x")["a"] == reg["a"]
    for text, message in [("{raster: r.tif}", "'reference' needs legend"),
                          ("{raster: r.tif, legend: l.yaml, legnd: x}", "did you mean 'legend'"),
                          ("r.tif", "'reference' must be a mapping")]:
        with pytest.raises(CountyError, match=message):
            parse_registry(f"counties: {{a: {{rasters: [a.tif], reference: {text}}}}}", "reg.yaml")


def _subcell_codes(rng) -> tuple[np.ndarray, np.ndarray]:
    """Codes of 4 x 4 sub-cells of every map cell and the class each map cell should get (a direct plurality of
    the sub-cells' classes, unlabelled voting too; ties: the lowest class, a class before unlabelled)."""
    pool = [c for codes in CODES.values() for c in codes] + [WATER, UNKNOWN, NODATA_CODE]
    sub = np.zeros((ROWS * 4, COLS * 4), int)
    expected = np.zeros((ROWS, COLS), int)
    class_of = {c: CLASSES.index(n) for n, codes in CODES.items() for c in codes}
    for r in range(ROWS):
        for c in range(COLS):
            main = CLASSES[(r * COLS + c) % len(CLASSES)]
            block = list(rng.choice(pool, 16 - 7)) + list(rng.choice(CODES[main], 7))  # codes of one class mixed
            if (r, c) == (0, 0):
                block = [WATER] * 10 + [41] * 6  # mostly water: unlabelled
            if (r, c) == (0, 1):
                block = [21] * 5 + [22] * 5 + [41] * 6  # more Developed than Forest, though 41 is the top code
            block = np.array(block)
            sub[r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = block.reshape(4, 4)
            votes = Counter(class_of.get(int(v), len(CLASSES)) for v in block)
            best = max(votes.values())
            winner = min(k for k, v in votes.items() if v == best)
            expected[r, c] = UNLABELLED if winner == len(CLASSES) else winner
    return sub, expected


def test_a_finer_reference_is_voted_by_class_onto_the_map_grid_and_agreement_equals_a_direct_count(tmp_path):
    rng = np.random.default_rng(5)
    sub, expected_ref = _subcell_codes(rng)
    assert expected_ref[0, 0] == UNLABELLED and expected_ref[0, 1] == CLASSES.index("Developed")
    fine = np.repeat(np.repeat(sub, 2, axis=0), 2, axis=1)  # 8 x 8 reference pixels (28 m) per 224 m map cell
    uri = _write(tmp_path / "ref.tif", fine, from_origin(LEFT, TOP, CELL / 8, CELL / 8), MAP_CRS)
    legend = read_legend(str(LEGEND_FILE))
    ref = reference_on_grid(uri, legend, CLASSES, from_origin(LEFT, TOP, CELL, CELL), ROWS, COLS, MAP_CRS)
    np.testing.assert_array_equal(ref, expected_ref)

    mapped = rng.integers(0, len(CLASSES), (ROWS, COLS)).astype(np.uint8)
    mapped[expected_ref != UNLABELLED] = np.where(rng.random((expected_ref != UNLABELLED).sum()) < 0.7,
                                                  expected_ref[expected_ref != UNLABELLED],
                                                  mapped[expected_ref != UNLABELLED])
    mapped[4, 5] = 255  # a cell with no tile
    result = map_agreement(mapped, ref, CLASSES, 255)
    for variant, grid in (("raw", mapped), ("smoothed", plurality_smooth(mapped, len(CLASSES), 255))):
        matrix = _direct(grid, expected_ref, len(CLASSES))
        a = result[variant]
        np.testing.assert_array_equal(a.matrix, matrix)
        assert a.cells == matrix.sum() == int(((grid != 255) & (expected_ref != UNLABELLED)).sum())
        assert a.overall == pytest.approx(np.trace(matrix) / matrix.sum())
        for i in range(len(CLASSES)):
            ref_i, map_i = expected_ref == i, grid == i
            both = ref_i & (grid != 255)
            assert a.producers[i] == pytest.approx((both & map_i).sum() / both.sum() if both.any() else 0.0)
            made = map_i & (expected_ref != UNLABELLED)
            assert a.users[i] == pytest.approx((made & ref_i).sum() / made.sum() if made.any() else 0.0)
    smoothed = plurality_smooth(mapped, len(CLASSES), 255)
    assert (smoothed != mapped).any()  # the smoothing moved tiles, and its numbers are the smoothed map's own
    assert result["smoothed"].to_dict()["overall"] == pytest.approx(
        np.mean(smoothed[(smoothed != 255) & (expected_ref != UNLABELLED)]
                == expected_ref[(smoothed != 255) & (expected_ref != UNLABELLED)]))


def test_a_reference_in_another_crs_is_reprojected_onto_the_map_grid(tmp_path):
    rng = np.random.default_rng(2)
    cell_class = rng.integers(0, len(CLASSES), (ROWS, COLS))
    cell_code = np.vectorize(lambda i: ONE_CODE[CLASSES[i]])(cell_class)
    cell_code[2, 3] = WATER
    cell_code[3, 1] = UNKNOWN
    # lon/lat box around the map, pixels of ~1e-4 degrees (8 x 11 m)
    xs = [LEFT, LEFT + COLS * CELL, LEFT, LEFT + COLS * CELL]
    ys = [TOP, TOP, TOP - ROWS * CELL, TOP - ROWS * CELL]
    lons, lats = warp_transform(MAP_CRS, "EPSG:4326", xs, ys)
    step = 1e-4
    west, north = min(lons) - 5 * step, max(lats) + 5 * step
    width, height = int((max(lons) + 5 * step - west) / step), int((north - min(lats) + 5 * step) / step)
    jj, ii = np.meshgrid(np.arange(width), np.arange(height))
    px, py = warp_transform("EPSG:4326", MAP_CRS, (west + (jj.ravel() + 0.5) * step).tolist(),
                            (north - (ii.ravel() + 0.5) * step).tolist())
    r = np.floor((TOP - np.array(py)) / CELL).astype(int).reshape(height, width)
    c = np.floor((np.array(px) - LEFT) / CELL).astype(int).reshape(height, width)
    inside = (r >= 0) & (r < ROWS) & (c >= 0) & (c < COLS)
    codes = np.full((height, width), NODATA_CODE)
    codes[inside] = cell_code[r[inside], c[inside]]
    uri = _write(tmp_path / "ref_4326.tif", codes, from_origin(west, north, step, step), "EPSG:4326")
    ref = reference_on_grid(uri, read_legend(str(LEGEND_FILE)), CLASSES, from_origin(LEFT, TOP, CELL, CELL),
                            ROWS, COLS, MAP_CRS)
    expected = cell_class.copy()
    expected[2, 3] = expected[3, 1] = UNLABELLED  # water and an unknown code are unlabelled
    np.testing.assert_array_equal(ref, expected)
    a = agreement(cell_class.astype(np.uint8), ref, CLASSES)
    assert a.cells == ROWS * COLS - 2 and a.overall == 1.0  # the unlabelled cells are left out, not counted wrong


def test_a_reference_that_cannot_be_read_is_a_clear_error(tmp_path):
    with pytest.raises(CountyError, match="cannot read the reference raster"):
        reference_on_grid(str(tmp_path / "none.tif"), read_legend(str(LEGEND_FILE)), CLASSES,
                          from_origin(LEFT, TOP, CELL, CELL), ROWS, COLS, MAP_CRS)
    with pytest.raises(CountyError, match="cannot read the reference legend"):
        read_legend(str(tmp_path / "none.yaml"))


# --- end to end ----------------------------------------------------------------------------------------------------
def test_county_map_agreement_end_to_end(graph_run, tiny_county, tmp_path_factory):
    raster, layout = tiny_county
    assert np.array_equal(layout, graph_run["layout"])
    folder = tmp_path_factory.mktemp("reference")
    codes = np.vectorize(lambda i: ONE_CODE[demo_data.DEMO_CLASSES[i]])(layout)
    codes[1, 2] = WATER  # one tile of water: unlabelled
    fine = np.repeat(np.repeat(codes, 8, axis=0), 8, axis=1)  # 28 m reference pixels, as NLCD's 30 m
    ref_uri = _write(folder / "nlcd.tif", fine, from_origin(*demo_data.DEMO_ORIGIN, 28.0, 28.0), demo_data.DEMO_CRS)
    registry = graph_run["root"] / "counties.yaml"
    doc = yaml.safe_load(registry.read_text())
    doc["counties"]["tiny_ref"] = {"name": "Tiny with NLCD", "rasters": [str(raster)],
                                   "reference": {"raster": ref_uri, "legend": str(LEGEND_FILE)}}
    registry.write_text(yaml.safe_dump(doc))
    graph_run["instance"].add_dynamic_partitions(county_partitions.name, ["tiny_ref"])
    runner = Runner(graph_run["defs"], graph_run["instance"], {})
    assert runner.run(["county_tiles", "county_predictions", "county_land_use_map", "county_map_agreement"],
                      "tiny_ref")

    root = graph_run["root"]
    out = root / "county_map_agreement" / "tiny_ref"
    result = json.loads((out / "agreement.json").read_text())
    classes = result["classes"]
    preds = pd.concat(pq.read_table(p).to_pandas()
                      for p in sorted((root / "county_predictions" / "tiny_ref" / "predictions.parquet").rglob("*.parquet")))
    preds = preds[preds["status"] == "ok"]
    left, top = preds["left"].min(), preds["top"].max()
    mapped = np.full((5, 6), 255, np.uint8)
    mapped[np.rint((top - preds["top"]) / 224).astype(int), np.rint((preds["left"] - left) / 224).astype(int)] = \
        preds["predicted_index"].to_numpy()
    truth = np.array([[classes.index(demo_data.DEMO_CLASSES[i]) for i in row] for row in layout])
    truth[1, 2] = UNLABELLED
    for variant, grid in (("raw", mapped), ("smoothed", plurality_smooth(mapped, len(classes), 255))):
        matrix = _direct(grid, truth, len(classes))
        assert result[variant]["confusion_matrix"] == matrix.tolist()
        assert result[variant]["overall"] == pytest.approx(np.trace(matrix) / matrix.sum())
        assert result[variant]["cells"] == 29
    assert result["smoothing_gain"] == pytest.approx(result["smoothed"]["overall"] - result["raw"]["overall"])
    assert (out / "confusion_raw.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "confusion_smoothed.png").read_bytes()[:4] == b"\x89PNG"
    meta = graph_run["instance"].get_latest_materialization_event(
        AssetKey("county_map_agreement")).asset_materialization.metadata
    assert meta["agreement_raw"].value == pytest.approx(result["raw"]["overall"], abs=1e-4)
    assert meta["smoothing_gain"].value == pytest.approx(result["smoothing_gain"], abs=1e-4)
    assert meta["confusion_smoothed"].value.startswith("![confusion")
    assert [r.data["class"] for r in meta["per_class"].records] == classes

    # a county with no reference is materialized, saying so, and with no Spark work
    assert runner.run(["county_map_agreement"], "tiny")
    meta = graph_run["instance"].get_latest_materialization_event(
        AssetKey("county_map_agreement")).asset_materialization.metadata
    assert "no reference raster registered" in meta["reference"].value
    assert json.loads((root / "county_map_agreement" / "tiny" / "agreement.json").read_text())["reference"] is None
