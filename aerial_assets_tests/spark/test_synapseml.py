"""SynapseML: ``lightgbm`` where the session loads SynapseML's classes (the 3.5 line with ``make jars``), one clear
line where it does not (the 4.x line here, Spark Connect), decided by class loading rather than version numbers.

Training LightGBM opens listeners on every interface (SynapseML's driver socket and LightGBM's workers have no bind
address), so the graph that trains it runs in a private network namespace (:mod:`aerial_assets_tests.netns`).
"""

from __future__ import annotations

import json
import os
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


def test_lightgbm_in_the_whole_graph_beside_the_discriminant(tiny_tiles, tmp_path):
    """On the 3.5 line with SynapseML's jars: trained, compared on the leaderboard, its pipeline and the
    discriminant's both loaded in one process (SynapseML's loader must not refuse the project's own stage), and
    scoring with it as the model."""
    if not synapseml_jars():
        pytest.skip("SynapseML's jars are not on this line (make jars PYSPARK=3.5.9 fetches them for the 3.5 line)")
    if not netns.available():
        pytest.skip("no private network namespace (unshare -n): LightGBM would listen on every interface")
    root = tmp_path / "root"
    env = {**os.environ, "AERIAL_DATA_ROOT": str(root), "AERIAL_TRAINING_TILES": str(tiny_tiles),
           "PYSPARK_PYTHON": sys.executable, "AERIAL_SPARK_DRIVER_MEMORY": "1g"}
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


def _scoring_config(folder: Path, model: str) -> Path:
    """A ``--config`` file that scores with ``model`` (``backbone|algorithm``) instead of the champion, and lets
    LightGBM split leaves of 2 rows (8 tiles a class: its default of 20 would allow no split)."""
    path = folder / "scoring.yaml"
    path.write_text(json.dumps({"ops": {"county_predictions": {"config": {"model_id": model}},
                                        "land_use_classifiers": {"config": {"gbm_min_data_in_leaf": 2}}}}))
    return path
