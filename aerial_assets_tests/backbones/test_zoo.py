"""The backbone zoo as assets, on real local Spark: every offline backbone (and the INT8 and combined ones)
exports, passes both blocking checks and gives features of its width through Spark; a combination reuses its
parts' cached features; user-supplied weights load from AERIAL_WEIGHTS_DIR or fail saying what to get."""

import json

import numpy as np
import pandas as pd
import pytest
from dagster import AssetCheckKey, AssetKey, instance_for_test

from aerial_assets.backbones.networks import get_backbone, offline_backbones
from aerial_assets.backbones.torch_weights import save_state_dict_zip
from aerial_assets.backbones.zoo import zoo_entry
from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.run import Runner
from aerial_assets_tests.backbones.test_nets import random_resnet18
from aerial_assets_tests.conftest import assert_plain_float_columns, env_for

CHECKS = ("backbone_imagenet_sanity", "backbone_reference_agreement")


@pytest.fixture(scope="module")
def zoo_run(spark, tiny_tiles, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_root")
    weights = tmp_path_factory.mktemp("weights")
    env = {**env_for(root, tiny_tiles), "AERIAL_WEIGHTS_DIR": str(weights)}
    with instance_for_test() as instance:
        runner = Runner(build_defs(env), instance, {"ops": {"backbone_models": {"config": {"calibration_tiles": 24}}}})
        assert runner.run(["labeled_tiles"])
        yield {"root": root, "runner": runner, "instance": instance, "weights": weights}


def _check_passed(instance, name: str, partition: str) -> bool:
    """The latest evaluation of check ``name`` on ``partition`` of backbone_models passed."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey("backbone_models"), name), limit=100)
    for record in history:  # newest first
        if record.partition == partition and record.event is not None:
            return bool(record.event.dagster_event.event_specific_data.passed)
    return False


@pytest.mark.parametrize("backbone", [*offline_backbones(), "mobilenet_v2_int8", "mobilenet_v2+efficientnet_lite0",
                                      "mobilenet_v2+efficientnet_lite2",  # parts of two input sizes: 224 and 260 px
                                      "squeezenet1_1_multilevel",  # checked against its reference relatively
                                      "mobilenet_v2_multilevel+efficientnet_lite0_multilevel+squeezenet1_1_multilevel"])
def test_backbone_exports_passes_checks_and_featurizes_on_spark(zoo_run, backbone):
    runner, root = zoo_run["runner"], zoo_run["root"]
    assert runner.run(["backbone_models", "tile_features"], backbone)
    for check in CHECKS:
        assert _check_passed(zoo_run["instance"], check, backbone), (backbone, check)
    record = json.loads((root / "backbone_models" / backbone / "backbone.json").read_text())
    assert record["feature_dim"] == zoo_entry(backbone).feature_dim
    assert len(record["weights_sha256"]) >= 64 and record["weights_license"] and record["preprocessing"]
    feats = pd.read_parquet(root / "tile_features" / backbone / "features.parquet")
    ok = feats[feats["status"] == "ok"]
    assert len(ok) == 48 and ok["features"].map(len).eq(record["feature_dim"]).all()


def test_combined_reuses_cached_part_features(zoo_run):
    root = zoo_run["root"]
    summary = json.loads((root / "tile_features" / "mobilenet_v2+efficientnet_lite0" / "summary.json").read_text())
    assert summary["reused_parts"] == ["mobilenet_v2", "efficientnet_lite0"]
    assert summary["feature_dim"] == 1280 + 1280

    def load(name):
        frame = pd.read_parquet(root / "tile_features" / name / "features.parquet")
        return frame.set_index("tile_id").sort_index()["features"]

    combined, a, b = load("mobilenet_v2+efficientnet_lite0"), load("mobilenet_v2"), load("efficientnet_lite0")
    tile = combined.index[0]
    np.testing.assert_array_equal(combined[tile], np.concatenate([a[tile], b[tile]]))
    assert_plain_float_columns(root / "tile_features" / "mobilenet_v2+efficientnet_lite0" / "features.parquet")


def test_int8_is_calibrated_on_training_tiles(zoo_run):
    record = json.loads((zoo_run["root"] / "backbone_models" / "mobilenet_v2_int8" / "backbone.json").read_text())
    assert record["calibration_tiles"] == 24 and "QDQ" in record["quantization"]


def test_user_supplied_weights_load_from_the_weights_folder(zoo_run):
    runner, weights = zoo_run["runner"], zoo_run["weights"]
    spec = get_backbone("resnet18")
    missing = runner.run(["backbone_models"], "resnet18")
    assert not missing and any("resnet18" in f for f in runner.failures)
    (weights / spec.weights_file).write_bytes(save_state_dict_zip(random_resnet18()))
    runner.failures.clear()
    # Random weights: the export and the numpy reference agree, and the ImageNet check rightly fails (blocking).
    assert not runner.run(["backbone_models"], "resnet18")
    assert _check_passed(zoo_run["instance"], "backbone_reference_agreement", "resnet18")
    assert not _check_passed(zoo_run["instance"], "backbone_imagenet_sanity", "resnet18")
    record = json.loads((zoo_run["root"] / "backbone_models" / "resnet18" / "backbone.json").read_text())
    assert record["weights_user_supplied"] is True and record["feature_dim"] == 512
