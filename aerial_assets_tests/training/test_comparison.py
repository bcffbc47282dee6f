"""The comparison on real Spark: every algorithm with a searched grid, rotation/flip views (averaged and
augmented), the label mapping and the accuracy floor, on generated tiles (and on an AID subset when present)."""

import json

import pandas as pd
import pytest
from dagster import AssetKey, MultiPartitionKey, instance_for_test

from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.partitions import county_partitions
from aerial_assets.defs.run import Runner
from aerial_assets.imagery.counties import County, render_registry
from aerial_assets.training.classifiers import PYSPARK_ML_ALGORITHMS
from aerial_assets_tests.conftest import assert_plain_float_columns, env_for, shared_dataset
from aerial_assets_tests.defs.test_integrity import _failure

LABEL_MAP = """
classes:
  Built: [Developed]
  Green: [Forest, Herbaceous, Shrub]
  Farm: [Cultivated]
"""  # 'Barren' is left out on purpose: it must be reported as unmapped


@pytest.fixture(scope="module")
def views_run(spark, tiny_tiles, tmp_path_factory):
    """Features with 4 views, a label map, and classifiers trained with augmentation."""
    root = tmp_path_factory.mktemp("views_root")
    label_map = root / "map.yaml"
    label_map.write_text(LABEL_MAP)
    env = {**env_for(root, tiny_tiles), "AERIAL_LABEL_MAP": str(label_map)}
    defs = build_defs(env)
    with instance_for_test() as instance:
        runner = Runner(defs, instance, {"ops": {"tile_features": {"config": {"views": 4}}}})
        assert runner.run(["labeled_tiles"])
        assert runner.run(["backbone_models", "tile_features"], "mobilenet_v2")
        yield {"root": root, "runner": runner, "instance": instance}


def test_label_map_relabels_and_reports_unmapped(views_run):
    root = views_run["root"]
    catalog = pd.read_parquet(root / "labeled_tiles" / "catalog.parquet")
    ok = catalog[catalog["status"] == "ok"]
    assert sorted(ok["label"].unique()) == ["Built", "Farm", "Green"]
    unmapped = catalog[catalog["status"] == "unmapped"]
    assert set(unmapped["source_label"]) == {"Barren"} and len(unmapped) == 8  # kept, with a reason
    assert unmapped["reason"].str.contains("not in the label map").all()
    report = json.loads((root / "labeled_tiles" / "label_map.json").read_text())
    assert report["unmapped"] == ["Barren"]
    check = views_run["instance"].get_latest_asset_check_evaluation_record(
        __import__("dagster").AssetCheckKey(AssetKey("labeled_tiles"), "labeled_tiles_label_map"))
    assert check is not None and check.event.dagster_event.event_specific_data.passed is False


def test_four_views_store_every_view(views_run):
    feats = pd.read_parquet(views_run["root"] / "tile_features" / "mobilenet_v2" / "features.parquet")
    ok = feats[feats["status"] == "ok"]
    assert ok["features"].map(len).eq(1280).all()
    assert ok["view_features"].map(len).eq(4 * 1280).all()
    # the stored feature is the mean of the four views
    first = ok.iloc[0]
    mean = first["view_features"].reshape(4, 1280).mean(axis=0)
    assert abs(mean - first["features"]).max() < 1e-5
    assert_plain_float_columns(views_run["root"] / "tile_features" / "mobilenet_v2" / "features.parquet")


@pytest.mark.parametrize("augmentation", ["augment", "average"])
def test_augmented_training_has_four_rows_per_training_tile(views_run, augmentation):
    runner, root = views_run["runner"], views_run["root"]
    runner.run_config = {"ops": {"land_use_classifiers": {"config": {"augmentation": augmentation}}}}
    key = MultiPartitionKey({"backbone": "mobilenet_v2", "algorithm": "logistic_regression"})
    assert runner.run(["land_use_classifiers", "classifier_metrics"], key)
    info = json.loads((root / "land_use_classifiers" / "mobilenet_v2" / "logistic_regression" /
                       "classifier.json").read_text())
    assert info["views"] == 4 and info["augmentation"] == augmentation
    assert info["n_train_rows"] == info["n_train"] * (4 if augmentation == "augment" else 1)
    assert info["search"]["method"] == "train_validation_split"
    assert len(info["search"]["candidates"]) == 3 and info["params"]["regParam"] in (0.001, 0.01, 0.1)
    # the search optimises the metric the champion is picked on, and the chosen candidate scored best
    assert info["search"]["metric"] == "macro_f1"
    scores = {c["regParam"]: c["macro_f1"] for c in info["search"]["candidates"]}
    assert scores[info["params"]["regParam"]] == max(scores.values())
    metrics = json.loads((root / "classifier_metrics" / "mobilenet_v2" / "logistic_regression" /
                          "metrics.json").read_text())
    assert sum(metrics["test"]["support"]) == 10  # 5 mapped source classes x 2; one row per test tile
    assert metrics["views"] == 4


def test_search_evaluator_is_macro_f1_not_accuracy(spark):
    """Three classes, one large: predicting the large class everywhere scores a high accuracy but a low
    macro-F1; the search's evaluator must give the macro-F1 of the reports, for classic and Connect sessions."""
    from aerial_assets.training.classifiers import macro_f1_evaluator
    from aerial_assets.training.metrics import confusion_matrix, report

    pairs = [(0, 0)] * 80 + [(1, 0)] * 10 + [(2, 2)] * 5 + [(2, 1)] * 5  # (label, prediction)
    df = spark.createDataFrame([(float(t), float(p)) for t, p in pairs], "label_idx double, prediction double")
    expected = report(confusion_matrix(((t, p, 1) for t, p in pairs), 3), ["a", "b", "c"])
    score = macro_f1_evaluator(3).evaluate(df)
    assert score == pytest.approx(expected.macro_f1) and score < expected.accuracy - 0.3
    assert macro_f1_evaluator(3).isLargerBetter()


@pytest.mark.parametrize("search", ["train_validation_split", "cross_validation"])
def test_search_keeps_the_views_of_a_tile_on_one_side(spark, search):
    """With train-time augmentation a tile's rotations must never be both fitted and scored by the search."""
    from aerial_assets.training.classifiers import ClassifierParams, search_splits

    rows = spark.createDataFrame([(f"t{t}", v) for t in range(60) for v in range(4)], "tile_id string, view int")
    params = ClassifierParams(search=search, search_folds=3)

    def tiles(df):
        return {r["tile_id"]: r["n"] for r in df.groupBy("tile_id").count().withColumnRenamed("count", "n").collect()}

    grouped = search_splits(rows, params, group_col="tile_id")
    assert len(grouped) == (3 if search == "cross_validation" else 1)
    held_out = []
    for fit_part, held in grouped:
        fitted, scored = tiles(fit_part), tiles(held)
        assert fitted and scored and not set(fitted) & set(scored)
        assert set(fitted.values()) | set(scored.values()) == {4}  # every view of a tile stays together
        assert len(fitted) + len(scored) == 60
        held_out += list(scored)
    if search == "cross_validation":
        assert sorted(held_out) == sorted(f"t{t}" for t in range(60))  # each tile is held out exactly once
    fit_part, held = search_splits(rows, params)[0]  # a plain row split mixes a tile's views
    assert set(tiles(fit_part)) & set(tiles(held))


def test_every_algorithm_trains_and_the_floor_check_runs(views_run):
    runner, instance = views_run["runner"], views_run["instance"]
    runner.run_config = {}
    for algorithm in PYSPARK_ML_ALGORITHMS:
        key = MultiPartitionKey({"backbone": "mobilenet_v2", "algorithm": algorithm})
        assert runner.run(["land_use_classifiers", "classifier_metrics"], key)
    runner.run_config = {"ops": {"champion_model": {"config": {}}}}
    assert runner.run(["model_leaderboard", "champion_model"])
    board = pd.read_csv(views_run["root"] / "model_leaderboard" / "leaderboard.csv")
    assert set(board["algorithm"]) == set(PYSPARK_ML_ALGORITHMS) and (board["views"] == 4).all()
    from dagster import AssetCheckKey

    record = instance.get_latest_asset_check_evaluation_record(
        AssetCheckKey(AssetKey("champion_model"), "champion_accuracy_floor"))
    data = record.event.dagster_event.event_specific_data
    champion = json.loads((views_run["root"] / "champion_model" / "champion.json").read_text())
    assert data.passed == (champion["test_accuracy"] >= 0.8)
    assert champion["views"] == 4


def test_county_scoring_uses_the_models_views_unless_told_fewer(views_run, tiny_tiles, tiny_county, tmp_path):
    """A 4-view champion scores a county with 4 views by default; ``county_predictions`` ``views: 1`` scores it
    with one (a quarter of the inference), and a view count that does not exist is refused."""
    root, instance = views_run["root"], views_run["instance"]
    raster, _ = tiny_county
    registry = tmp_path / "counties.yaml"
    registry.write_text(render_registry({"tiny": County("tiny", "Tiny county", [str(raster)])}))
    defs = build_defs({**env_for(root, tiny_tiles, registry), "AERIAL_LABEL_MAP": str(root / "map.yaml")})
    runner = Runner(defs, instance, {})
    if not (root / "champion_model" / "champion.json").exists():  # when run on its own
        assert runner.run(["land_use_classifiers", "classifier_metrics"],
                          MultiPartitionKey({"backbone": "mobilenet_v2", "algorithm": "logistic_regression"}))
        assert runner.run(["model_leaderboard", "champion_model"])
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    assert champion["views"] == 4
    instance.add_dynamic_partitions(county_partitions.name, ["tiny"])
    assert runner.run(["county_tiles"], "tiny")
    assert runner.run(["county_predictions"], "tiny")  # the champion, with its 4 views
    assert json.loads((root / "county_predictions" / "tiny" / "summary.json").read_text())["views"] == 4
    # the logistic regression from here on: its probabilities move with the features (the discriminant's can be
    # saturated at 0 and 1 on data this small, so they would not show that other views were used)
    lr = {"model_id": "mobilenet_v2|logistic_regression"}
    runner.run_config = {"ops": {"county_predictions": {"config": lr}}}
    assert runner.run(["county_predictions"], "tiny")
    folder = root / "county_predictions" / "tiny"
    assert json.loads((folder / "summary.json").read_text())["views"] == 4
    four = pd.read_parquet(folder / "predictions.parquet").set_index("tile_id").sort_index()
    runner.run_config = {"ops": {"county_predictions": {"config": {**lr, "views": 1}}}}
    assert runner.run(["county_predictions"], "tiny")
    assert json.loads((folder / "summary.json").read_text())["views"] == 1
    one = pd.read_parquet(folder / "predictions.parquet").set_index("tile_id").sort_index()
    assert list(one.index) == list(four.index) and len(one) == 30
    probs = [c for c in one.columns if c.startswith("prob_")]
    assert not (one[probs] - four[probs]).abs().lt(1e-6).all().all()  # other features, other probabilities
    assert (one["predicted_label"] == four["predicted_label"]).mean() >= 0.5  # but mostly the same land use
    refused = runner.job.execute_in_process(
        run_config={"ops": {"county_predictions": {"config": {"views": 3}}}}, instance=instance,
        partition_key="tiny", asset_selection=[AssetKey("county_predictions")], raise_on_error=False)
    assert not refused.success
    assert "views must be 0 (the model's) or one of (1, 4, 8), got 3" in _failure(refused)


def test_aid_subset_every_algorithm(spark, tmp_path):
    """A small real subset of AID (4 classes x 12 images): every algorithm trains and scores above chance."""
    import shutil

    aid = shared_dataset("aid")
    tiles = tmp_path / "aid_subset"
    for cls in ("Beach", "Forest", "Parking", "Farmland"):
        (tiles / cls).mkdir(parents=True)
        for src in sorted((aid / cls).iterdir())[:12]:
            shutil.copy(src, tiles / cls / src.name)
    defs = build_defs(env_for(tmp_path / "root", tiles))
    with instance_for_test() as instance:
        runner = Runner(defs, instance, {"ops": {"labeled_tiles": {"config": {"test_fraction": 0.5}}}})
        assert runner.run(["labeled_tiles"])
        assert runner.run(["backbone_models", "tile_features"], "mobilenet_v2")
        runner.run_config = {}
        for algorithm in PYSPARK_ML_ALGORITHMS:
            assert runner.run(["land_use_classifiers", "classifier_metrics"],
                              MultiPartitionKey({"backbone": "mobilenet_v2", "algorithm": algorithm}))
        assert runner.run(["model_leaderboard"])
    board = pd.read_csv(tmp_path / "root" / "model_leaderboard" / "leaderboard.csv")
    assert len(board) == len(PYSPARK_ML_ALGORITHMS)
    assert (board["accuracy"] > 0.5).all()  # chance is 0.25


def test_make_run_without_settings_trains_and_compares_the_accurate_preset(tiny_tiles, tmp_path):
    """``make run`` with nothing set: the default preset's combined backbone with 8 rotated/flipped views, the
    shrinkage discriminant trained on every view, logistic regression and the MLP on their mean; a champion
    among them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from aerial_assets.training.presets import DEFAULT_PRESET, get_preset

    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AERIAL_", "AZURE_STORAGE_", "SPARK_REMOTE"))}
    env.pop("DAGSTER_HOME", None)
    env.update(AERIAL_DATA_ROOT=str(root), AERIAL_TRAINING_TILES=str(tiny_tiles), PYSPARK_PYTHON=sys.executable)
    done = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", "--skip-counties"],
                          cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    preset = get_preset(DEFAULT_PRESET)
    assert f"preset {preset.name}: backbones {', '.join(preset.backbones)}" in done.stdout
    board = pd.read_csv(root / "model_leaderboard" / "leaderboard.csv").set_index("algorithm")
    assert sorted(board.index) == sorted(preset.algorithms) and set(board["backbone"]) == set(preset.backbones)
    assert (board["views"] == 8).all()
    assert board.loc["linear_discriminant", "augmentation"] == "augment"
    assert board.loc["logistic_regression", "augmentation"] == "average"
    assert board.loc["mlp", "augmentation"] == "average"
    backbone = preset.backbones[0]
    assert json.loads((root / "tile_features" / backbone / "summary.json").read_text())["views"] == 8
    catalog = pd.read_parquet(root / "labeled_tiles" / "catalog.parquet")
    n_train = int((catalog["split"] == "train").sum())
    info = json.loads((root / "land_use_classifiers" / backbone / "linear_discriminant" / "classifier.json").read_text())
    assert info["n_train"] == n_train and info["n_train_rows"] == 8 * n_train  # every view of a training tile is a row
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    assert champion["backbone"] == backbone and champion["views"] == 8 and 0.0 <= champion["test_ece"] <= 1.0
