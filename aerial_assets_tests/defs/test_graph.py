"""The whole graph, materialized for real on tiny seeded data with local Spark and local storage."""

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
from dagster import DagsterInstance

from aerial_assets.defs.partitions import county_partitions
from aerial_assets.defs.run import Runner
from aerial_assets_tests.conftest import latest_metadata


def test_leaderboard_has_every_backbone_x_algorithm_row(graph_run):
    board = pd.read_csv(graph_run["root"] / "model_leaderboard" / "leaderboard.csv")
    assert list(board.columns[:7]) == ["backbone", "algorithm", "accuracy", "macro_f1", "n_train", "n_test",
                                       "fit_seconds"]
    assert sorted(zip(board["backbone"], board["algorithm"], strict=True)) == [
        ("mobilenet_v2", "linear_discriminant"), ("mobilenet_v2", "logistic_regression"), ("mobilenet_v2", "mlp"),
        ("mobilenet_v2", "random_forest")]
    assert (board["n_test"] == 12).all()  # 6 classes x round(8 x 0.2) test tiles
    # The synthetic classes are visually distinct: the transfer-learned features separate them.
    assert board["accuracy"].max() >= 0.8


def test_champion_is_chosen_on_validation_and_bundled(graph_run):
    champion = json.loads((graph_run["root"] / "champion_model" / "champion.json").read_text())
    board = pd.read_csv(graph_run["root"] / "model_leaderboard" / "leaderboard.csv")
    assert champion["val_macro_f1"] == pytest.approx(board["val_macro_f1"].max())
    assert "validation macro-F1" in champion["why"]
    assert (graph_run["root"] / "champion_model" / "model.onnx").stat().st_size > 1_000_000
    assert (graph_run["root"] / "champion_model" / "pipeline_model").is_dir()


def test_calibration_of_every_classifier_is_recomputed_from_its_test_predictions(graph_run):
    """ECE in metrics.json, the leaderboard and champion.json is the one the test-set probabilities give."""
    from aerial_assets.training.metrics import calibration

    root = graph_run["root"]
    board = pd.read_csv(root / "model_leaderboard" / "leaderboard.csv").set_index("algorithm")
    for algorithm in board.index:
        folder = root / "classifier_metrics" / "mobilenet_v2" / algorithm
        metrics = json.loads((folder / "metrics.json").read_text())
        preds = pd.read_csv(folder / f"{algorithm}_predictions_test_set.csv")
        probs = preds[[c for c in preds.columns if c.startswith("prob_")]]
        expected = calibration(probs.max(axis=1).to_numpy(), (preds["label"] == preds["pred_label"]).to_numpy())
        assert metrics["calibration"]["n"] == len(preds) == 12
        assert metrics["calibration"]["ece"] == pytest.approx(expected.ece)
        assert 0.0 <= metrics["calibration"]["ece"] <= 1.0
        assert board.loc[algorithm, "ece"] == pytest.approx(expected.ece)
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    assert champion["test_ece"] == pytest.approx(board.loc[champion["algorithm"], "ece"])


def test_predictions_cover_every_tile_with_probabilities_and_model_id(graph_run, spark):
    root = graph_run["root"]
    tiles = spark.read.parquet(str(root / "county_tiles" / "tiny" / "tiles.parquet")).toPandas()
    preds = spark.read.parquet(str(root / "county_predictions" / "tiny" / "predictions.parquet")).toPandas()
    assert len(tiles) == 30 and (tiles["status"] == "ok").all()
    assert len(preds) == len(tiles)
    prob_cols = [c for c in preds.columns if c.startswith("prob_")]
    assert len(prob_cols) == 6
    np.testing.assert_allclose(preds[prob_cols].sum(axis=1), 1.0, atol=1e-6)
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    assert set(preds["model_id"]) == {champion["model_id"]}
    # centroids are real longitudes/latitudes in Middlesex County, MA
    assert preds["lon"].between(-71.6, -71.0).all() and preds["lat"].between(42.4, 42.7).all()


def test_map_files_exist_with_county_crs_transform_and_truth(graph_run):
    folder = graph_run["root"] / "county_land_use_map" / "tiny"
    assert (folder / "land_use.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with rasterio.open(folder / "land_use.tif") as ds:
        assert ds.crs.to_epsg() == 26919
        assert ds.shape == (5, 6)
        assert ds.transform.a == pytest.approx(224.0) and ds.transform.e == pytest.approx(-224.0)
        assert (ds.transform.c, ds.transform.f) == pytest.approx((305_000.0, 4_720_000.0))
        grid = ds.read(1)
        assert ds.colormap(1)[0][:3] != (0, 0, 0)
    # the painted layout is recovered for most tiles
    assert (grid == graph_run["layout"]).mean() >= 0.8


def test_metadata_is_rich_enough_to_compare_in_the_ui(graph_run):
    instance: DagsterInstance = graph_run["instance"]
    from dagster import AssetKey

    event = instance.get_latest_materialization_event(AssetKey("model_leaderboard"))
    meta = event.asset_materialization.metadata
    rows = [r.data for r in meta["leaderboard"].records]  # a Dagster table (sortable in the UI), not markdown
    assert {"backbone": "mobilenet_v2", "algorithm": "logistic_regression"}.items() <= rows[0].items() or any(
        r["backbone"] == "mobilenet_v2" and r["algorithm"] == "logistic_regression" for r in rows)
    tiles_meta = instance.get_latest_materialization_event(AssetKey("labeled_tiles")).asset_materialization.metadata
    assert "| **total** |" in tiles_meta["counts_per_class_and_split"].value
    assert tiles_meta["n_resized"].value == 48  # every 64 px tile is resized to 224
    map_meta = latest_metadata(instance, "county_land_use_map", "tiny")  # other tests map other counties
    assert map_meta["map"].value.startswith("![land use map of tiny](data:image/png;base64,")


def test_real_naip_vintages_go_through_the_whole_county_path(graph_run, spark):
    """Two real NAIP vintages (4-band RGBN, 5 m, EPSG:26914): tiled, scored, mapped and compared."""
    import yaml

    from aerial_assets_tests.conftest import shared_dataset

    naip = shared_dataset("naip_nd")
    files = {2014: sorted(naip.glob("*_2014*.tif")), 2020: sorted(naip.glob("*_2020*.tif"))}
    assert all(files.values()), f"NAIP 2014/2020 rasters missing in {naip}"
    root = graph_run["root"]
    registry = root / "counties.yaml"
    doc = yaml.safe_load(registry.read_text())
    doc["counties"]["nd"] = {"name": "NAIP quarter-quad", "bounds": [-99.25, 46.95, -99.05, 47.05],
                             "vintages": {year: [str(f[0])] for year, f in files.items()}}
    registry.write_text(yaml.safe_dump(doc))
    keys = ["nd@2014", "nd@2020"]
    instance = graph_run["instance"]
    instance.add_dynamic_partitions(county_partitions.name, keys)
    runner = Runner(graph_run["defs"], instance, {})
    assert runner.run(["county_tiles", "county_predictions", "county_land_use_map"], partition_range=tuple(keys))
    for key in keys:
        with rasterio.open(root / "county_land_use_map" / key / "land_use.tif") as ds:
            assert ds.crs.to_epsg() == 26914
            assert ds.shape == (16, 20)  # 723 x 934 px at 5 m, cut into 45 px (225 m) tiles
            assert ds.transform.a == pytest.approx(225.0)
        preds = spark.read.parquet(str(root / "county_predictions" / key / "predictions.parquet"))
        assert preds.count() == 16 * 20
        means = preds.agg({"lon": "avg", "lat": "avg"}).first()
        assert -99.3 < means["avg(lon)"] < -99.0 and 46.9 < means["avg(lat)"] < 47.1  # quad 47099: 47 N, 99 W
    assert runner.run(["county_land_use_change"], "nd@2020")
    summary = json.loads((root / "county_land_use_change" / "nd@2020" / "summary.json").read_text())
    assert summary["baseline"] == "nd@2014" and sum(map(sum, summary["matrix"])) == 320
    # a transition is out of distribution when its tile is in either vintage
    pairs = pd.read_parquet(root / "county_land_use_change" / "nd@2020" / "transitions.parquet")
    after = pd.read_parquet(root / "county_predictions" / "nd@2020" / "predictions.parquet",
                            columns=["tile_id", "in_distribution"])
    merged = pairs.merge(after, on="tile_id")
    assert len(merged) == 320 and pairs["out_of_distribution"].notna().all()
    assert merged.loc[~merged["in_distribution"], "out_of_distribution"].all()
    changed_ood = int((pairs["changed"] & pairs["out_of_distribution"]).sum())
    meta = latest_metadata(instance, "county_land_use_change", "nd@2020")
    assert meta["tiles_changed_out_of_distribution"].value == changed_ood
