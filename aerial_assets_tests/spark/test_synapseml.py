"""SynapseML: ``lightgbm`` and the ``synapseml`` featurization engine (the backbone graphs in SynapseML's ONNXModel on
the JVM executors) where the session loads SynapseML's classes (the 3.5 line with ``make jars``), one clear line where
it does not (the 4.x line here, Spark Connect), decided by class loading rather than version numbers.

The engine's features are compared with the default engine's by :mod:`aerial_assets_tests.spark.engine_compare`, a
process of its own with SynapseML's jars on its session (this process's session has none, and holds one context).

Training LightGBM opens listeners on every interface (SynapseML's driver socket and LightGBM's workers have no bind
address), so the graph that trains it runs in a private network namespace (:mod:`aerial_assets_tests.netns`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from dagster import MultiPartitionKey

from aerial_assets.defs.run import report
from aerial_assets.errors import ConfigurationError
from aerial_assets.spark.synapseml import LIGHTGBM_CLASS, loads_class, require, scala_version, synapseml_jars
from aerial_assets_tests import netns
from aerial_assets_tests.conftest import SHARED_DATASETS, env_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_class_check_loads_what_the_session_has_and_refuses_what_it_lacks(spark):
    assert loads_class(spark, "org.apache.spark.ml.classification.LogisticRegression")
    # the tests' session is opened without SynapseML's jars, on either line
    assert not loads_class(spark, LIGHTGBM_CLASS)
    with pytest.raises(ConfigurationError) as refused:
        require(spark, "lightgbm", LIGHTGBM_CLASS)
    message = str(refused.value)
    assert "lightgbm needs SynapseML" in message and "PYSPARK=3.5.9" in message and LIGHTGBM_CLASS in message
    assert "\n" not in message


def test_synapseml_jars_go_on_sessions_of_their_scala_line_only(tmp_path):
    (tmp_path / "synapseml-core_2.12-1.1.3.jar").write_bytes(b"PK")
    assert synapseml_jars(str(tmp_path)) == []  # not complete: make jars did not finish
    (tmp_path / ".complete").touch()
    expected = [str(tmp_path / "synapseml-core_2.12-1.1.3.jar")] if scala_version() == "2.12" else []
    assert synapseml_jars(str(tmp_path)) == expected
    assert scala_version() in ("2.12", "2.13")


def test_asking_for_lightgbm_without_synapseml_fails_at_once_in_one_line(graph_run, capsys):
    """The step fails before reading any feature, and make run's summary says why in the classifier's own words."""
    from aerial_assets.defs.run import Runner

    runner = Runner(graph_run["defs"], graph_run["instance"], {})
    key = MultiPartitionKey({"backbone": "mobilenet_v2", "algorithm": "lightgbm"})
    assert not runner.run(["land_use_classifiers"], key)
    assert report(runner, graph_run["defs"].resources, [], "home") == 1
    err = capsys.readouterr().err
    summary = err[err.index("step(s) failed:"):]
    assert "lightgbm needs SynapseML, but this Spark session cannot load" in summary, summary
    assert "make install PYSPARK=3.5.9" in summary


def test_asking_for_the_synapseml_engine_without_synapseml_fails_at_once_in_one_line(spark, tiny_tiles, tmp_path,
                                                                                   capsys):
    from dagster import instance_for_test

    from aerial_assets.defs.definitions import build_defs
    from aerial_assets.defs.run import Runner

    env = env_for(tmp_path / "root", tiny_tiles)
    with pytest.raises(ConfigurationError, match="AERIAL_FEATURIZE_ENGINE='jvm' is not one of onnxruntime, synapseml"):
        build_defs({**env, "AERIAL_FEATURIZE_ENGINE": "jvm"})
    defs = build_defs({**env, "AERIAL_FEATURIZE_ENGINE": "synapseml"})
    with instance_for_test() as instance:
        runner = Runner(defs, instance, {})
        assert not runner.run(["tile_features"], "mobilenet_v2")
        assert report(runner, defs.resources, [], "home") == 1
    err = capsys.readouterr().err
    summary = err[err.index("step(s) failed:"):]
    assert "AERIAL_FEATURIZE_ENGINE=synapseml needs SynapseML, but this Spark session cannot load" in summary, summary
    assert "make install PYSPARK=3.5.9" in summary and not (tmp_path / "root" / "tile_features").exists()


def _aid_sample(folder: Path, per_class: int) -> Path | None:
    """``per_class`` images of every AID class, linked (never copied) into ``folder``; None without ../shared."""
    aid = SHARED_DATASETS / "aid"
    if not aid.is_dir():
        return None
    for klass in sorted(p for p in aid.iterdir() if p.is_dir()):
        (folder / klass.name).mkdir(parents=True)
        for image in sorted(klass.iterdir())[:per_class]:
            (folder / klass.name / image.name).symlink_to(image)
    return folder


def _compare(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "aerial_assets_tests.spark.engine_compare", *args], cwd=REPO,
                          env={**os.environ, "PYSPARK_PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_synapseml_engine_gives_the_onnxruntime_features_on_real_images(tiny_tiles, tmp_path):
    """AID scenes (2 of each of the 30 classes; the seeded demo tiles without ../shared), 4 views each, and a file
    that is not an image: the same rows, statuses, reasons and features (every view's too) from both engines."""
    if not synapseml_jars():
        pytest.skip("SynapseML's jars are not on this line (make jars PYSPARK=3.5.9 fetches them for the 3.5 line)")
    from aerial_assets.backbones.zoo import export_entry, zoo_entry

    images = _aid_sample(tmp_path / "aid", per_class=2) or tiny_tiles
    files = tmp_path / "files"
    shutil.copytree(images, files, symlinks=True)
    (files / sorted(p.name for p in files.iterdir())[0] / "broken.jpg").write_bytes(b"not a jpeg")
    model = tmp_path / "model.onnx"
    model.write_bytes(export_entry(zoo_entry("mobilenet_v2")).model.SerializeToString())
    result = _compare("--model", str(model), "--files", str(files), "--views", "4")["files"]
    print(result)
    n_images = sum(1 for _ in files.glob("*/*")) - 1
    assert result["rows"] == result["in_both"] == n_images + 1 and result["ok"] == n_images
    assert result["same_status"] and result["same_reason"] and result["quarantined"] == 1
    assert result["reasons"] == ["not an image (unrecognised format)"]
    assert result["max_abs_diff"] <= 1e-4 and result["max_view_abs_diff"] <= 1e-4
    assert result["views_kept"] == n_images


def test_lightgbm_and_the_synapseml_engine_in_the_whole_graph_beside_the_discriminant(tiny_tiles, tmp_path):
    """On the 3.5 line with SynapseML's jars, ``AERIAL_FEATURIZE_ENGINE=synapseml``: lightgbm trained, compared on
    the leaderboard, its pipeline and the discriminant's both loaded in one process (SynapseML's loader must not
    refuse the project's own stage), and the county scored with it as the model; the tiles featurized and the
    county's windows scored by ONNXModel, whose window features equal the default engine's."""
    if not synapseml_jars():
        pytest.skip("SynapseML's jars are not on this line (make jars PYSPARK=3.5.9 fetches them for the 3.5 line)")
    if not netns.available():
        pytest.skip("no private network namespace (unshare -n): LightGBM would listen on every interface")
    root = tmp_path / "root"
    env = {**os.environ, "AERIAL_DATA_ROOT": str(root), "AERIAL_TRAINING_TILES": str(tiny_tiles),
           "PYSPARK_PYTHON": sys.executable, "AERIAL_SPARK_DRIVER_MEMORY": "1g",
           "AERIAL_FEATURIZE_ENGINE": "synapseml"}
    env.pop("DAGSTER_HOME", None)
    env.pop("AERIAL_COUNTIES", None)  # the demo county
    run = [sys.executable, "-m", "aerial_assets.defs.run", "--preset", "fast", "--backbones", "mobilenet_v2",
           "--algorithms", "lightgbm,linear_discriminant",
           "--config", str(_scoring_config(tmp_path, "mobilenet_v2|lightgbm"))]
    done = subprocess.run(netns.command(run), cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    board = pd.read_csv(root / "model_leaderboard" / "leaderboard.csv").set_index("algorithm")
    assert set(board.index) == {"lightgbm", "linear_discriminant"}
    assert board.loc["lightgbm", "accuracy"] >= 0.8 and board.loc["lightgbm", "fit_seconds"] > 0
    record = json.loads((root / "land_use_classifiers" / "mobilenet_v2" / "lightgbm" / "classifier.json").read_text())
    assert record["params"]["numIterations"] == 200 and record["params"]["minDataInLeaf"] == 2
    predictions = root / "county_predictions" / "demo_middlesex" / "predictions.parquet"
    scored = pd.concat(pd.read_parquet(p) for p in sorted(predictions.glob("*.parquet")))
    assert len(scored) > 0 and set(scored["model_id"]) == {record["model_id"]}
    assert scored["predicted_label"].notna().all()
    for summary in (root / "tile_features" / "mobilenet_v2", root / "county_predictions" / "demo_middlesex"):
        assert json.loads((summary / "summary.json").read_text())["engine"] == "synapseml", summary
    windows = _compare("--model", str(root / "backbone_models" / "mobilenet_v2" / "model.onnx"),
                       "--tiles", str(root / "county_tiles" / "demo_middlesex" / "tiles.parquet"))["windows"]
    print(windows)
    assert windows["rows"] == windows["in_both"] == windows["ok"] == len(scored)
    assert windows["same_status"] and windows["max_abs_diff"] <= 1e-4


def _scoring_config(folder: Path, model: str) -> Path:
    """A ``--config`` file that scores with ``model`` (``backbone|algorithm``) instead of the champion, and lets
    LightGBM split leaves of 2 rows (8 tiles a class: its default of 20 would allow no split)."""
    path = folder / "scoring.yaml"
    path.write_text(json.dumps({"ops": {"county_predictions": {"config": {"model_id": model}},
                                        "land_use_classifiers": {"config": {"gbm_min_data_in_leaf": 2}}}}))
    return path
