"""Careless and hostile input, end to end on real local Spark and real Dagster runs: spreadsheet formulas in class
names, a deleted or truncated part of a Spark-written dataset or stored model, what ``make run`` prints when a check
or a step fails, a county whose every tile is quarantined, ready-made tiles in subfolders and behind symlinks,
a 2-band raster, a training folder of links that lead out of it. Seeded data; nothing of the project is mocked."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from dagster import instance_for_test
from PIL import Image
from rasterio.transform import from_origin

from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.partitions import county_partitions
from aerial_assets.defs.run import Runner, report
from aerial_assets.imagery.counties import County, render_registry
from aerial_assets_tests.conftest import env_for
from aerial_assets_tests.defs.test_integrity import BACKBONE, LR, QUICK_LR, Graph, _failure, _split_layout

FORMULA_CLASS = '=HYPERLINK("http:\\\\evil","x"),1'  # a folder name a spreadsheet would run as a formula
PLUS_CLASS = "+Cultivated"


@pytest.fixture(scope="module")
def hostile_root(spark, tiny_tiles, tiny_county, tmp_path_factory):
    """A data root trained on tiles whose class folders include formulas (two classes renamed), with its champion
    and the tiny county tiled and scored."""
    base = tmp_path_factory.mktemp("hostile")
    tiles = base / "tiles"
    shutil.copytree(tiny_tiles, tiles)
    os.rename(tiles / "Barren", tiles / FORMULA_CLASS)
    os.rename(tiles / "Cultivated", tiles / PLUS_CLASS)
    root = base / "root"
    registry = base / "counties.yaml"
    registry.write_text(render_registry({"tiny": County("tiny", "Tiny", [str(tiny_county[0])])}))
    with instance_for_test() as instance:
        graph = Graph(root, tiles, instance, registry)
        for assets, key, config in ((["labeled_tiles"], None, None),
                                    (["backbone_models", "tile_features"], BACKBONE, None),
                                    (["land_use_classifiers"], LR, QUICK_LR), (["classifier_metrics"], LR, None),
                                    (["model_leaderboard", "champion_model"], None, None)):
            result = graph.run(assets, key, config)
            assert result.success, _failure(result)
        instance.add_dynamic_partitions(county_partitions.name, ["tiny"])
        result = graph.run(["county_tiles", "county_predictions"], "tiny")
        assert result.success, _failure(result)
    return {"root": root, "tiles": tiles, "registry": registry}


def _graph(hostile_root, tmp_path, instance, registry: Path | None = None) -> Graph:
    """A graph over a copy of the hostile root (each test damages its own copy), with its registry or ``registry``."""
    root = tmp_path / "root"
    shutil.copytree(hostile_root["root"], root)
    return Graph(root, hostile_root["tiles"], instance, registry or hostile_root["registry"])


# --- item 6: CSV formula injection ---------------------------------------------------------------------------

def test_formulas_in_class_names_are_neutralised_in_every_csv(hostile_root):
    folder = hostile_root["root"] / "classifier_metrics" / BACKBONE / "logistic_regression"
    with open(folder / "logistic_regression_predictions_test_set.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header, cells = rows[0], [c for row in rows[1:] for c in row]
    assert f"'prob_{FORMULA_CLASS}" not in header  # prob_ columns start with a letter: left alone
    hostile = [c for c in cells if FORMULA_CLASS in c or PLUS_CLASS in c]
    assert hostile, "the test split has tiles of the renamed classes"
    assert all(c.startswith("'") for c in hostile if c.lstrip("'").startswith(("=", "+")))
    assert not [c for c in cells if c.startswith(("=", "+", "@"))]  # no cell a spreadsheet would evaluate
    champion = json.loads((hostile_root["root"] / "champion_model" / "champion.json").read_text())
    assert FORMULA_CLASS in champion["classes"]  # the leaderboard read back what it wrote: names unchanged


# --- items 8 and 9: manifests -------------------------------------------------------------------------------

def test_training_on_features_with_a_part_deleted_is_refused(hostile_root, tmp_path):
    with instance_for_test() as instance:
        graph = _graph(hostile_root, tmp_path, instance)
        dataset = graph.root / "tile_features" / BACKBONE / "features.parquet"
        parts = sorted(p for p in dataset.iterdir() if p.name.endswith(".parquet"))
        assert len(parts) >= 2
        parts[0].unlink()
        result = graph.run(["land_use_classifiers"], LR, QUICK_LR)
        assert not result.success
        message = _failure(result)
        assert f"is not what tile_features[{BACKBONE}] wrote (1 file(s) missing: {parts[0].name})" in message
        assert f"re-materialize tile_features[{BACKBONE}]" in message
        metrics = graph.run(["classifier_metrics"], LR)
        assert not metrics.success and f"tile_features[{BACKBONE}]" in _failure(metrics)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_scoring_with_a_damaged_champion_fails_in_one_line_naming_champion_model(hostile_root, tmp_path, damage):
    with instance_for_test() as instance:
        graph = _graph(hostile_root, tmp_path, instance)
        instance.add_dynamic_partitions(county_partitions.name, ["tiny"])
        pipeline = graph.root / "champion_model" / "pipeline_model"
        part = sorted(p for p in pipeline.rglob("part-*") if p.stat().st_size > 0)[0]
        if damage == "delete":
            part.unlink()
        else:
            part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
        result = graph.run(["county_predictions"], "tiny")
        assert not result.success
        message = _failure(result)
        assert "is not what champion_model wrote" in message and "re-materialize champion_model" in message
        assert "AnalysisException" not in message and "FAILED_READ_FILE" not in message


# --- item 10: what make run prints ---------------------------------------------------------------------------

def test_make_runs_summary_prints_failed_checks_and_step_causes(spark, tiny_tiles, tmp_path, capsys):
    tiles = _split_layout(tiny_tiles, tmp_path / "tiles")
    shutil.copy(tiles / "train" / "Forest" / "forest_003.png", tiles / "test" / "Forest" / "copy.png")
    env = env_for(tmp_path / "root", tiles)
    defs = build_defs(env)
    with instance_for_test() as instance:
        runner = Runner(defs, instance, {})
        assert not runner.run(["labeled_tiles"])
        status = report(runner, defs.resources, [], "home")
    err = capsys.readouterr().err
    assert status == 1
    assert "asset check(s) did not pass" in err and "labeled_tiles_leakage" in err
    assert "test/Forest/copy.png" in err and "train/Forest/forest_003.png" in err  # the check's own description
    assert "step(s) failed" in err and "labeled_tiles: " in err

    one_class = tmp_path / "one_class"  # a step that fails with the asset's own error: its message is the cause
    shutil.copytree(tiny_tiles / "Forest", one_class / "Forest")
    defs = build_defs(env_for(tmp_path / "root2", one_class))
    with instance_for_test() as instance:
        runner = Runner(defs, instance, {})
        assert not runner.run(["labeled_tiles"])
        assert report(runner, defs.resources, [], "home") == 1
    err = capsys.readouterr().err
    assert "- labeled_tiles: aerial_assets.errors.TrainingDataError: found 1 class(es)" in err, err
    summary = err[err.index("step(s) failed:"):]  # make run's summary, after Dagster's own log lines
    assert "found 1 class(es) with usable images (Forest)" in summary and "Error occurred while" not in summary


def test_a_training_folder_of_links_out_of_it_says_so_and_names_the_setting(spark, tiny_tiles, tmp_path):
    tiles = tmp_path / "tiles"
    for cls in ("Forest", "Shrub"):
        (tiles / cls).mkdir(parents=True)
        for f in sorted((tiny_tiles / cls).iterdir())[:3]:
            os.symlink(f, tiles / cls / f.name)
    with instance_for_test() as instance:
        result = Graph(tmp_path / "root", tiles, instance).run(["labeled_tiles"])
    message = _failure(result)
    assert not result.success and "found 0 class(es) with usable images" in message
    assert "6 file(s) were quarantined as symlinks leading out of the folder" in message
    assert "follow_external_links: true" in message


def _tile_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)


def _tile_folder_county(tmp_path: Path, names: list[str]) -> Path:
    """A summary CSV (projected layout, EPSG:26919) of one row of 224 m tiles named ``names``."""
    lines = ["filename,left,bottom,right,top"]
    for i, name in enumerate(names):
        left = 300000 + 224 * i
        lines.append(f"{name},{left},4700000,{left + 224},4700224")
    (tmp_path / "tiles").mkdir(exist_ok=True)
    summary = tmp_path / "tiles" / "summary.csv"
    summary.write_text("\n".join(lines) + "\n")
    return summary


def _register(hostile_root, tmp_path: Path, entries: dict[str, dict]) -> Path:
    import yaml

    registry = tmp_path / "counties.yaml"
    registry.write_text(yaml.safe_dump({"counties": entries}))
    return registry


def _county_graph(hostile_root, tmp_path, instance, registry: Path, keys: list[str]) -> Graph:
    graph = _graph(hostile_root, tmp_path, instance, registry)
    instance.add_dynamic_partitions(county_partitions.name, keys)
    return graph


def test_a_county_whose_every_tile_is_quarantined_gives_counts_by_reason(hostile_root, tmp_path):
    summary = _tile_folder_county(tmp_path, ["gone_1.png", "gone_2.png", "gone_3.png"])
    registry = _register(hostile_root, tmp_path, {"ghost": {"tiles": {
        "folder": str(summary.parent), "summary": str(summary), "crs": "EPSG:26919"}}})
    with instance_for_test() as instance:
        graph = _county_graph(hostile_root, tmp_path, instance, registry, ["ghost"])
        result = graph.run(["county_tiles", "county_predictions", "county_land_use_map"], "ghost")
        message = _failure(result)
    assert not result.success
    assert "county ghost has no scored tile: 3 tile(s) cut: 3 usable, 0 mostly nodata, 0 quarantined when tiling; " \
           "3 quarantined when scoring (3 x unreadable tile: no file at ..." in message
    assert "all nodata?" not in message


def test_ready_made_tiles_in_subfolders_are_found_and_links_out_of_the_folder_quarantined(hostile_root, tmp_path):
    summary = _tile_folder_county(tmp_path, ["sub/a.png", "sub/b.png", "old/path/c.png", "linked.png"])
    folder = summary.parent
    _tile_png(folder / "sub" / "a.png", 1)
    _tile_png(folder / "sub" / "b.png", 2)
    _tile_png(folder / "c.png", 3)  # the summary names an old path: found by its base name
    _tile_png(tmp_path / "elsewhere" / "secret.png", 4)
    os.symlink(tmp_path / "elsewhere" / "secret.png", folder / "linked.png")
    registry = _register(hostile_root, tmp_path, {"folder": {"tiles": {
        "folder": str(folder), "summary": str(summary), "crs": "EPSG:26919"}}})
    with instance_for_test() as instance:
        graph = _county_graph(hostile_root, tmp_path, instance, registry, ["folder"])
        result = graph.run(["county_tiles", "county_predictions"], "folder")
        assert result.success, _failure(result)
    tiles = json.loads((graph.root / "county_tiles" / "folder" / "summary.json").read_text())
    assert tiles["counts"] == {"ok": 3, "quarantined": 1}
    import pandas as pd

    table = pd.read_parquet(graph.root / "county_tiles" / "folder" / "tiles.parquet").set_index("tile_id")
    assert "outside the tile folder" in table.loc["folder/linked.png", "reason"]
    assert table.loc["folder/old/path/c.png", "raster_uri"] == str(folder / "c.png")
    scored = json.loads((graph.root / "county_predictions" / "folder" / "summary.json").read_text())
    assert scored["n_tiles"] == 3 and scored["n_quarantined"] == 0


def test_a_two_band_raster_is_tiled_with_the_ignored_band_named(hostile_root, tmp_path):
    path = tmp_path / "two_band.tif"
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=2, dtype="uint8", crs="EPSG:26919",
                       transform=from_origin(300000, 4700448, 3.5, 3.5)) as ds:
        ds.write(np.random.default_rng(0).integers(1, 255, (2, 128, 128), dtype=np.uint8))
    registry = _register(hostile_root, tmp_path, {"grey": {"rasters": [str(path)]}})
    with instance_for_test() as instance:
        graph = _county_graph(hostile_root, tmp_path, instance, registry, ["grey"])
        result = graph.run(["county_tiles"], "grey")
        assert result.success, _failure(result)
        materialization = next(e for e in result.get_asset_materialization_events())
        notes = materialization.materialization.metadata["band_notes"].value
    assert "band 2 is ignored" in notes
    summary = json.loads((graph.root / "county_tiles" / "grey" / "summary.json").read_text())
    assert "band 2 is ignored" in summary["sources"][0]["band_note"]
