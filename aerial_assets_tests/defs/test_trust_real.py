"""Real imagery unlike the training tiles is flagged and the check warns, naming the causes: a model trained on AID
scenes (Google Earth, 150 px) maps a real NAIP vintage (5 m: 224 m tiles are 45 px, upsampled 5x). Skipped without
``../shared/datasets``."""

import json
import shutil

import pandas as pd
from dagster import AssetKey, DagsterEventType, EventRecordsFilter, MultiPartitionKey, instance_for_test

from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.partitions import county_partitions
from aerial_assets.defs.run import Runner
from aerial_assets.imagery.counties import County, render_registry
from aerial_assets_tests.conftest import env_for, shared_dataset

AID_CLASSES = ("Forest", "Farmland", "DenseResidential", "Pond", "Meadow", "BareLand")


def _check(instance, name: str):
    records = instance.get_event_records(EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION))
    found = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    found = [e for e in found if e.asset_key == AssetKey("county_predictions") and e.check_name == name]
    assert found, f"no evaluation of {name}"
    return found[-1]


def test_an_aid_trained_model_on_naip_is_flagged_and_the_check_names_resolution_and_upsampling(spark, tmp_path):
    aid, naip = shared_dataset("aid"), shared_dataset("naip_nd")
    tiles = tmp_path / "tiles"
    for name in AID_CLASSES:  # copies, not links: links out of the folder are quarantined by default
        (tiles / name).mkdir(parents=True)
        for image in sorted((aid / name).glob("*.jpg"))[:30]:
            shutil.copy(image, tiles / name / image.name)
    root = tmp_path / "root"
    root.mkdir()
    registry = root / "counties.yaml"
    raster = sorted(naip.glob("*_2020*.tif"))[0]
    registry.write_text(render_registry({"nd": County("nd", "NAIP quarter-quad", [str(raster)])}))
    # AID is 0.5 to 8 m per pixel; declaring 1 m exercises the comparison with the county's 5 m
    env = {**env_for(root, tiles, registry), "AERIAL_MLFLOW": "0", "AERIAL_TRAINING_GSD_M": "1.0"}
    defs = build_defs(env)
    with instance_for_test() as instance:
        runner = Runner(defs, instance, {})
        assert runner.run(["labeled_tiles"])
        assert runner.run(["backbone_models", "tile_features"], "mobilenet_v2")
        key = MultiPartitionKey({"backbone": "mobilenet_v2", "algorithm": "logistic_regression"})
        assert runner.run(["land_use_classifiers", "classifier_metrics"], key)
        assert runner.run(["model_leaderboard", "champion_model"])
        instance.add_dynamic_partitions(county_partitions.name, ["nd"])
        assert runner.run(["county_tiles", "county_predictions"], "nd")
        evaluation = _check(instance, "county_predictions_in_distribution")
        assert runner.failed_checks and "county_predictions_in_distribution" in runner.failed_checks[-1]

    metrics = json.loads((root / "classifier_metrics" / "mobilenet_v2" / "logistic_regression" / "metrics.json")
                         .read_text())
    assert metrics["ood"]["share_out"] < 0.2  # AID's own test tiles are mostly in distribution
    summary = json.loads((root / "county_predictions" / "nd" / "summary.json").read_text())
    trust = summary["trust"]
    share = trust["n_out_of_distribution"] / summary["n_tiles"]
    assert share > 0.5, trust  # NAIP at 5 m is another kind of image than AID's scenes
    assert trust["county_gsd_m"] == 5.0 and trust["training_gsd_m"] == 1.0
    assert trust["n_upsampled"] == trust["n_size_known"] == summary["n_tiles"] == 320
    assert evaluation.passed is False and evaluation.severity.value == "WARN"
    text = evaluation.description
    assert text.startswith(f"nd: {100 * share:.1f} % of tiles are out of distribution (limit 10 %)")
    assert "5 m per pixel, the training tiles 1 m (declared (AERIAL_TRAINING_GSD_M)): 5x (a likely cause)" in text
    assert "100 % of tiles are upsampled more than 2x to the network's 224 px input" in text
    frame = pd.read_parquet(root / "county_predictions" / "nd" / "predictions.parquet")
    assert int((~frame["in_distribution"]).sum()) == trust["n_out_of_distribution"]
