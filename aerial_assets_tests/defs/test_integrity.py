"""Integrity of what the graph trains and ranks on (issue 13, items 2, 3, 6 and 7's catalog part).

Leakage between splits is found by content hash and blocks; copies inside a split or under two classes warn;
class names that differ only by case fail at ``labeled_tiles``; dangling symlinks, link loops and links out
of the training folder are quarantined instead of failing the catalog; and no step trains, scores or ranks
on outputs that do not belong to the current upstream (a failed ``tile_features`` leaves older features).
Real local Spark, real onnxruntime and real Dagster runs on seeded tiny data; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, MultiPartitionKey, instance_for_test, materialize
from PIL import Image

from aerial_assets.defs.assets.tiles import labeled_tiles
from aerial_assets.defs.definitions import build_defs
from aerial_assets.errors import TrainingDataError
from aerial_assets_tests.conftest import env_for

BACKBONE = "mobilenet_v2"
LR = MultiPartitionKey({"backbone": BACKBONE, "algorithm": "logistic_regression"})
RF = MultiPartitionKey({"backbone": BACKBONE, "algorithm": "random_forest"})
# A quick logistic regression and a deliberately weak forest (one stump cannot tell six classes apart), so that
# the logistic regression is the champion of the fixture whatever the seed.
QUICK_LR = {"search": "none", "lr_max_iter": 30}
WEAK_RF = {"search": "none", "rf_num_trees": 1, "rf_max_depth": 1}


class Graph:
    """Runs selections of the real implicit asset job against one data root and one instance, keeping the
    result (the project's Runner prints failures; these tests read them)."""

    def __init__(self, root: Path, tiles: Path, instance, registry: Path | None = None):
        self.root, self.instance = root, instance
        self.job = build_defs(env_for(root, tiles, registry)).resolve_implicit_global_asset_job_def()

    def run(self, assets: list[str], partition=None, config: dict | None = None):
        return self.job.execute_in_process(
            run_config={"ops": {a: {"config": config} for a in assets}} if config else {},
            instance=self.instance, partition_key=partition, asset_selection=[AssetKey(a) for a in assets],
            raise_on_error=False)


def _failure(result) -> str:
    """Every step failure's message, with its causes (Dagster wraps the asset's own exception)."""
    texts = []
    for event in result.all_events:
        error = event.step_failure_data.error if event.is_step_failure else None
        while error is not None:
            texts.append(error.message)
            error = error.cause
    return " ".join(texts)


def _check(result, name: str):
    found = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    assert found, f"no evaluation of the check {name} in the run"
    return found[0]


def _metadata(event) -> dict:
    """Metadata values; a Dagster table as its cells' text, one row per line (so a name can be looked up in it)."""
    return {k: "\n".join(" | ".join(str(c) for c in r.data.values()) for r in v.records) if hasattr(v, "records")
            else getattr(v, "value", v) for k, v in event.metadata.items()}


def _noise_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)


def _split_layout(tiny_tiles: Path, dst: Path) -> Path:
    """train/<class>/ with six tiles per class and test/<class>/ with the other two (all distinct bytes)."""
    for cls in sorted(p.name for p in tiny_tiles.iterdir()):
        files = sorted((tiny_tiles / cls).iterdir())
        for split, chosen in (("train", files[:6]), ("test", files[6:])):
            (dst / split / cls).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, dst / split / cls / f.name)
    return dst


def _catalog(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "labeled_tiles" / "catalog.parquet").set_index("tile_id")


# --- item 2: content hashes, leakage (blocking) and duplicates (warning) -------------------------------------


def test_catalog_records_the_sha256_of_every_file_and_clean_data_passes(spark, tiny_tiles, tmp_path):
    with instance_for_test() as instance:
        graph = Graph(tmp_path / "data", tiny_tiles, instance)
        result = graph.run(["labeled_tiles"])
        assert result.success, _failure(result)
        catalog = _catalog(graph.root)
        assert len(catalog) == 48
        for tile_id, row in catalog.iterrows():
            assert row["sha256"] == hashlib.sha256((tiny_tiles / tile_id).read_bytes()).hexdigest()
        assert _check(result, "labeled_tiles_leakage").passed
        assert _check(result, "labeled_tiles_duplicates").passed


def test_test_image_identical_to_a_training_image_blocks_naming_both(spark, tiny_tiles, tmp_path):
    tiles = _split_layout(tiny_tiles, tmp_path / "tiles")
    shutil.copy(tiles / "train" / "Forest" / "forest_003.png", tiles / "test" / "Forest" / "copy.png")
    with instance_for_test() as instance:
        graph = Graph(tmp_path / "data", tiles, instance)
        result = graph.run(["labeled_tiles"])
        check = _check(result, "labeled_tiles_leakage")
        assert not check.passed and check.blocking
        assert not result.success  # a failed blocking check fails the run: nothing downstream runs on it
        meta = _metadata(check)
        assert meta["n_test_identical_to_train"] + meta["n_test_identical_to_validation"] == 1
        assert meta["n_validation_identical_to_train"] == 0
        assert "test/Forest/copy.png" in meta["pairs"] and "train/Forest/forest_003.png" in meta["pairs"]
        assert "test/Forest/copy.png" in check.description and "train/Forest/forest_003.png" in check.description


def test_test_folder_identical_to_train_blocks(spark, tiny_tiles, tmp_path):
    tiles = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, tiles / "train")
    shutil.copytree(tiny_tiles, tiles / "test")
    with instance_for_test() as instance:
        result = Graph(tmp_path / "data", tiles, instance).run(["labeled_tiles"])
        check = _check(result, "labeled_tiles_leakage")
        assert not check.passed and not result.success
        meta = _metadata(check)
        # every test tile is a copy of a train (or a validation) tile
        assert meta["n_test_identical_to_train"] + meta["n_test_identical_to_validation"] == 48
        summary = json.loads((tmp_path / "data" / "labeled_tiles" / "summary.json").read_text())
        assert summary["duplicates"]["n_test_identical_to_train"] == meta["n_test_identical_to_train"]


def test_copies_inside_a_split_and_under_two_classes_warn(spark, tiny_tiles, tmp_path):
    tiles = _split_layout(tiny_tiles, tmp_path / "tiles")
    _noise_png(tiles / "test" / "Forest" / "a.png", seed=11)
    shutil.copy(tiles / "test" / "Forest" / "a.png", tiles / "test" / "Forest" / "b.png")
    shutil.copy(tiles / "test" / "Forest" / "a.png", tiles / "test" / "Shrub" / "c.png")
    with instance_for_test() as instance:
        result = Graph(tmp_path / "data", tiles, instance).run(["labeled_tiles"])
        assert result.success, _failure(result)  # a warning, not a failure
        assert _check(result, "labeled_tiles_leakage").passed  # all three copies are in the test split
        check = _check(result, "labeled_tiles_duplicates")
        assert not check.passed and check.severity.value == "WARN"
        meta = _metadata(check)
        assert meta["n_duplicate_groups_within_split"] == 1 and meta["n_extra_copies_within_split"] == 2
        assert meta["n_groups_across_classes"] == 1
        assert "Forest, Shrub" in meta["across_classes"] and "test/Shrub/c.png" in meta["across_classes"]
        assert "test/Forest/b.png" in meta["within_split"]


# --- item 7 (catalog part): class names that differ only by case -----------------------------------------


def test_class_folders_differing_only_by_case_fail_at_labeled_tiles(spark, tiny_tiles, tmp_path):
    tiles = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, tiles)
    (tiles / "forest").mkdir()
    for f in sorted((tiles / "Forest").iterdir())[:4]:
        f.rename(tiles / "forest" / f.name)
    resources = build_defs(env_for(tmp_path / "data", tiles)).resources
    with pytest.raises(TrainingDataError, match=r"class folders Forest/ and forest/ differ only by case"):
        materialize([labeled_tiles], resources=resources)


# --- item 6: symlinks in the training folder ----------------------------------------------------------------


def test_dangling_links_and_link_loops_are_quarantined_not_fatal(spark, tiny_tiles, tmp_path):
    tiles = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, tiles)
    os.symlink(tmp_path / "gone.png", tiles / "Forest" / "dangling.png")
    os.symlink("loop_b.png", tiles / "Forest" / "loop_a.png")
    os.symlink("loop_a.png", tiles / "Forest" / "loop_b.png")
    os.symlink("self.png", tiles / "Shrub" / "self.png")
    os.symlink("..", tiles / "Barren" / "up")  # a folder link back to the training folder itself
    _noise_png(tiles / ".store" / "x.png", seed=3)  # hidden: not listed itself
    os.symlink("../.store/x.png", tiles / "Forest" / "inside.png")  # a link within the folder is followed
    with instance_for_test() as instance:
        graph = Graph(tmp_path / "data", tiles, instance)
        result = graph.run(["labeled_tiles"])
        assert result.success, _failure(result)
        catalog = _catalog(graph.root)
    bad = catalog[catalog["status"] == "quarantined"]["reason"]
    assert sorted(bad.index) == ["Barren/up", "Forest/dangling.png", "Forest/loop_a.png", "Forest/loop_b.png",
                                 "Shrub/self.png"]
    assert "dangling symlink" in bad["Forest/dangling.png"] and "gone.png" in bad["Forest/dangling.png"]
    assert all("symlink loop" in bad[t] for t in ("Forest/loop_a.png", "Forest/loop_b.png", "Shrub/self.png",
                                                   "Barren/up"))
    assert not [t for t in catalog.index if t.startswith("Barren/up/")]  # the loop is not walked
    assert catalog.loc["Forest/inside.png", "status"] == "ok"
    assert (catalog["status"] == "ok").sum() == 49
    csv = pd.read_csv(graph.root / "labeled_tiles" / "quarantine.csv")
    assert len(csv) == 5


def test_links_out_of_the_training_folder_are_quarantined_unless_allowed(spark, tiny_tiles, tmp_path):
    tiles = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, tiles)
    _noise_png(tmp_path / "elsewhere" / "outside.png", seed=5)
    os.symlink(tmp_path / "elsewhere" / "outside.png", tiles / "Developed" / "outside.png")
    os.symlink(tmp_path / "elsewhere", tiles / "Developed" / "linked_folder")  # a folder link out, too
    with instance_for_test() as instance:
        graph = Graph(tmp_path / "data", tiles, instance)
        result = graph.run(["labeled_tiles"])
        assert result.success, _failure(result)
        catalog = _catalog(graph.root)
        reason = catalog.loc["Developed/outside.png", "reason"]
        assert catalog.loc["Developed/outside.png", "status"] == "quarantined"
        assert "outside the training folder" in reason and "follow_external_links: true" in reason
        assert catalog.loc["Developed/linked_folder/outside.png", "status"] == "quarantined"

        allowed = graph.run(["labeled_tiles"], config={"follow_external_links": True})
        assert allowed.success, _failure(allowed)
        catalog = _catalog(graph.root)
        assert catalog.loc["Developed/outside.png", "status"] == "ok"
        assert len(catalog.loc["Developed/outside.png", "sha256"]) == 64
        # nested one level too deep: quarantined for that, no longer for leaving the folder
        assert catalog.loc["Developed/linked_folder/outside.png", "reason"].startswith("nested deeper")


# --- item 3: nothing trains, scores or ranks on outputs of an older upstream --------------------------------


@pytest.fixture(scope="module")
def trained_root(spark, tiny_tiles, tmp_path_factory) -> Path:
    """A data root with the catalog, mobilenet_v2 features, a logistic regression and a weak random forest (with
    metrics), the leaderboard and the champion (the logistic regression)."""
    root = tmp_path_factory.mktemp("integrity_root")
    with instance_for_test() as instance:
        graph = Graph(root, tiny_tiles, instance)
        for assets, key, config in ((["labeled_tiles"], None, None),
                                    (["backbone_models", "tile_features"], BACKBONE, None),
                                    (["land_use_classifiers"], LR, QUICK_LR), (["classifier_metrics"], LR, None),
                                    (["land_use_classifiers"], RF, WEAK_RF), (["classifier_metrics"], RF, None),
                                    (["model_leaderboard", "champion_model"], None, None)):
            result = graph.run(assets, key, config)
            assert result.success, _failure(result)
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    assert champion["algorithm"] == "logistic_regression", "the fixture needs the logistic regression to win"
    return root


def _copy_root(trained_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(trained_root, root)
    return root


def _model_id(root: Path, algorithm: str) -> str:
    return json.loads((root / "land_use_classifiers" / BACKBONE / algorithm / "classifier.json").read_text())[
        "model_id"]


def test_classifiers_record_the_identity_of_their_features(trained_root):
    info = json.loads((trained_root / "land_use_classifiers" / BACKBONE / "random_forest" / "classifier.json")
                      .read_text())
    catalog_sha = hashlib.sha256((trained_root / "labeled_tiles" / "catalog.parquet").read_bytes()).hexdigest()
    assert info["upstream"]["catalog_sha256"] == catalog_sha
    assert len(info["upstream"]["features_sha256"]) == 64
    lr = json.loads((trained_root / "land_use_classifiers" / BACKBONE / "logistic_regression" / "classifier.json")
                    .read_text())
    assert lr["upstream"] == info["upstream"]  # both trained on the same stored features
    metrics = json.loads((trained_root / "classifier_metrics" / BACKBONE / "random_forest" / "metrics.json")
                         .read_text())
    assert metrics["upstream"] == info["upstream"]


def test_features_of_another_catalog_are_refused_after_tile_features_fails(trained_root, tiny_tiles, tmp_path):
    root = _copy_root(trained_root, tmp_path)
    five = tmp_path / "five_classes"
    shutil.copytree(tiny_tiles, five, ignore=lambda d, names: ["Shrub"] if Path(d) == tiny_tiles else [])
    champion_before = (root / "champion_model" / "champion.json").read_bytes()
    with instance_for_test() as instance:
        graph = Graph(root, five, instance)
        assert graph.run(["labeled_tiles"]).success
        failed = graph.run(["tile_features"], BACKBONE, {"views": 3})  # a real failure: the old features stay
        assert not failed.success
        refused = graph.run(["land_use_classifiers"], LR, QUICK_LR)
        assert not refused.success
        message = _failure(refused)
        assert "tile_features[mobilenet_v2] was computed from another catalog" in message
        assert "Re-materialize tile_features for partition mobilenet_v2" in message
        assert _model_id(root, "logistic_regression") == _model_id(trained_root, "logistic_regression")

        metrics = graph.run(["classifier_metrics"], RF)
        assert not metrics.success and "another catalog" in _failure(metrics)

        board = graph.run(["model_leaderboard"])
        assert not board.success
        assert "logistic_regression: tile_features[mobilenet_v2] was computed from another catalog" in _failure(board)

        champion = graph.run(["champion_model"])  # alone, on the leaderboard of the old catalog
        assert not champion.success and "no model on the leaderboard belongs" in _failure(champion)
    assert (root / "champion_model" / "champion.json").read_bytes() == champion_before


def test_leaderboard_ranks_only_classifiers_of_the_current_features(trained_root, tiny_tiles, tmp_path):
    root = _copy_root(trained_root, tmp_path)
    with instance_for_test() as instance:
        graph = Graph(root, tiny_tiles, instance)
        assert graph.run(["tile_features"], BACKBONE).success  # same catalog, new features
        assert graph.run(["land_use_classifiers"], RF, WEAK_RF).success
        assert graph.run(["classifier_metrics"], RF).success
        stale = graph.run(["classifier_metrics"], LR)  # the regression was trained on the previous features
        assert not stale.success
        assert "re-materialize land_use_classifiers for partition mobilenet_v2|logistic_regression" in _failure(stale)

        result = graph.run(["model_leaderboard", "champion_model"])
        assert result.success, _failure(result)
        board = pd.read_csv(root / "model_leaderboard" / "leaderboard.csv")
        assert list(board["algorithm"]) == ["random_forest"]
        meta = _metadata(result.asset_materializations_for_node("model_leaderboard")[0])
        assert meta["n_left_out"] == 1
        assert "mobilenet_v2|logistic_regression" in meta["left_out"]
        assert "trained on older tile_features[mobilenet_v2]" in meta["left_out"]
        champion = json.loads((root / "champion_model" / "champion.json").read_text())
        assert champion["algorithm"] == "random_forest"
        assert champion["model_id"] == _model_id(root, "random_forest") != _model_id(trained_root, "random_forest")


def test_champion_never_names_a_model_that_is_no_longer_stored(trained_root, tiny_tiles, tmp_path):
    root = _copy_root(trained_root, tmp_path)
    shutil.rmtree(root / "land_use_classifiers" / BACKBONE / "logistic_regression")  # the leaderboard's top
    with instance_for_test() as instance:
        graph = Graph(root, tiny_tiles, instance)
        champion = graph.run(["champion_model"])  # on the leaderboard that still ranks it first
        assert champion.success, _failure(champion)
        record = json.loads((root / "champion_model" / "champion.json").read_text())
        assert record["algorithm"] == "random_forest"
        assert record["model_id"] == _model_id(root, "random_forest")
        assert "no longer stored" in record["left_out"]["mobilenet_v2|logistic_regression"]
        meta = _metadata(champion.asset_materializations_for_node("champion_model")[0])
        assert meta["n_left_out"] == 1

        board = graph.run(["model_leaderboard"])
        assert board.success, _failure(board)
        assert list(pd.read_csv(root / "model_leaderboard" / "leaderboard.csv")["algorithm"]) == ["random_forest"]
        assert "no longer stored" in _metadata(board.asset_materializations_for_node("model_leaderboard")[0])[
            "left_out"]
