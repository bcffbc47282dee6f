"""MLflow after the graph ran (the shared ``graph_run``: every pyspark.ml algorithm, local Spark, the embedded store):
a run per leaderboard row, the champion registered and servable in a process without Spark or Dagster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import MultiPartitionKey

from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.run import Runner
from aerial_assets.errors import ConfigurationError
from aerial_assets.tracking.mlflow_store import CHAMPION_ALIAS, Target, check_reachable
from aerial_assets_tests.conftest import latest_metadata
from aerial_assets_tests.sockets import answer, free_port, listening_addresses

MODEL_NAME = "aerial_assets_land_use"
REPO = Path(__file__).resolve().parents[2]


def _client(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root}/mlflow/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _classifier_runs(client) -> list:
    experiment = client.get_experiment_by_name("aerial_assets")
    runs = client.search_runs([experiment.experiment_id], "tags.`dagster.asset` = 'classifier_metrics'",
                              max_results=1000)
    return runs


def test_one_run_per_leaderboard_row_with_the_leaderboards_numbers(graph_run):
    client, _ = _client(graph_run["root"])
    board = pd.read_csv(graph_run["root"] / "model_leaderboard" / "leaderboard.csv")
    runs = {r.info.run_id: r for r in _classifier_runs(client)}
    assert board["mlflow_run_id"].notna().all()
    for row in board.itertuples():
        run = runs[row.mlflow_run_id]  # the row names its run, and the run is in the experiment
        metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        assert metrics["test_accuracy"] == pytest.approx(row.accuracy, abs=1e-12)
        assert metrics["test_macro_f1"] == pytest.approx(row.macro_f1, abs=1e-12)
        assert metrics["val_accuracy"] == pytest.approx(row.val_accuracy, abs=1e-12)
        assert metrics["val_macro_f1"] == pytest.approx(row.val_macro_f1, abs=1e-12)
        assert metrics["ece"] == pytest.approx(row.ece, abs=1e-12)
        assert metrics["fit_seconds"] == pytest.approx(row.fit_seconds, abs=1e-9)
        assert metrics["test_n"] == row.n_test
        assert (params["backbone"], params["algorithm"]) == (row.backbone, row.algorithm)
        assert params["views"] == str(row.views) and "search_candidates" in params
        assert tags["aerial.model_id"] == row.model_id
        assert tags["dagster.partition"] == f"{row.backbone}|{row.algorithm}"
        assert tags["aerial.catalog_sha256"] == row.catalog_sha256
        assert tags["aerial.features_sha256"] == row.features_sha256
        assert run.info.status == "FINISHED"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"confusion.png", "per_class.md", "metrics.json",
                f"{row.algorithm}_predictions_test_set.csv"} <= artifacts
        # the Dagster materialization links to the run
        metadata = latest_metadata(graph_run["instance"], "classifier_metrics",
                                   MultiPartitionKey({"backbone": row.backbone, "algorithm": row.algorithm}))
        assert metadata["mlflow_run_id"].value == row.mlflow_run_id
        assert metadata["mlflow_run"].value.endswith(f"/runs/{row.mlflow_run_id}")


def test_the_champion_is_registered_under_its_alias(graph_run):
    client, _ = _client(graph_run["root"])
    champion = json.loads((graph_run["root"] / "champion_model" / "champion.json").read_text())
    version = client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    assert version.tags["aerial.model_id"] == champion["model_id"]
    assert champion["mlflow_model"] == f"{MODEL_NAME}/{version.version}"
    run = client.get_run(version.run_id)
    assert run.data.metrics["val_macro_f1"] == pytest.approx(champion["val_macro_f1"], abs=1e-12)
    model_files = {a.path for a in client.list_artifacts(version.run_id, "model")}
    assert {"model/MLmodel", "model/artifacts", "model/code", "model/requirements.txt"} <= model_files
    mlmodel = yaml.safe_load(Path(client.download_artifacts(version.run_id, "model/MLmodel")).read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    outputs = {c["name"]: c["type"] for c in json.loads(mlmodel["signature"]["outputs"])}
    assert inputs == [{"type": "binary", "name": "image", "required": True}]
    assert outputs["label"] == "string" and outputs["error"] == "string"
    assert {f"prob_{c}" for c in champion["classes"]} <= {k for k, v in outputs.items() if v == "double"}
    assert mlmodel["saved_input_example_info"]["type"] == "dataframe"
    requirements = Path(client.download_artifacts(version.run_id, "model/requirements.txt")).read_text()
    assert "onnxruntime==" in requirements and "pyspark" not in requirements and "dagster" not in requirements
    assert latest_metadata(graph_run["instance"], "champion_model")["mlflow_model"].value == champion["mlflow_model"]


SERVE = r'''
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    """Spark and Dagster are not importable here, and neither is this project's own install."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pyspark", "py4j", "dagster"):
            raise ImportError(f"{name} is not available to the served model")
        return None

sys.meta_path[:] = [Refuse()] + [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
import mlflow.pyfunc
import pandas as pd

mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/aerial_assets_land_use@champion")
images = [open(path, "rb").read() for path in pd.read_csv(sys.argv[2])["filepath"]] + [b"not an image"]
model.predict(pd.DataFrame({"image": images})).to_json(sys.argv[3], orient="records")
import aerial_assets
print(json.dumps({"package": aerial_assets.__file__, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
'''


def test_the_registered_champion_predicts_like_the_graph_without_spark_or_dagster(graph_run, tmp_path):
    root = graph_run["root"]
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    algorithm = champion["algorithm"]
    tests = root / "classifier_metrics" / champion["backbone"] / algorithm / f"{algorithm}_predictions_test_set.csv"
    script = tmp_path / "serve.py"
    script.write_text(SERVE)
    _, uri = _client(root)
    done = subprocess.run([sys.executable, str(script), uri, str(tests), str(tmp_path / "out.json")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["package"].startswith(str(root / "mlflow" / "artifacts"))  # the model's own copy of the code
    assert not {"pyspark", "py4j", "dagster"} & set(info["loaded"])
    served = pd.read_json(tmp_path / "out.json", orient="records")
    expected = pd.read_csv(tests)
    probs = [c for c in expected.columns if c.startswith("prob_")]
    assert list(served["label"][:-1]) == list(expected["pred_label"])
    np.testing.assert_allclose(served[probs][:-1].to_numpy(), expected[probs].to_numpy(), rtol=0, atol=1e-5)
    assert served["error"][:-1].eq("").all()
    bad = served.iloc[-1]  # the undecodable image keeps its row, with its reason
    assert bad["label"] is None and "not an image" in bad["error"] and bad[probs].isna().all()


def test_rematerializing_a_partition_adds_a_run_and_keeps_the_earlier_ones(graph_run):
    client, _ = _client(graph_run["root"])
    before = {r.info.run_id: r.data.metrics for r in _classifier_runs(client)}
    key = MultiPartitionKey({"backbone": "mobilenet_v2", "algorithm": "logistic_regression"})
    assert Runner(graph_run["defs"], graph_run["instance"], {}).run(["classifier_metrics"], key)
    after = {r.info.run_id: r.data.metrics for r in _classifier_runs(client)}
    assert set(before) < set(after) and len(after) == len(before) + 1
    assert all(after[run_id] == metrics for run_id, metrics in before.items())  # nothing overwritten
    new = after[(set(after) - set(before)).pop()]
    board = pd.read_csv(graph_run["root"] / "model_leaderboard" / "leaderboard.csv")
    row = board[board["algorithm"] == "logistic_regression"].iloc[0]
    assert new["test_accuracy"] == pytest.approx(row["accuracy"], abs=1e-12)  # the same model, evaluated again


def test_mlflow_ui_serves_the_store_on_loopback_only(graph_run):
    port = free_port()
    env = {**os.environ, "AERIAL_DATA_ROOT": str(graph_run["root"])}
    venv = Path(sys.prefix)
    server = subprocess.Popen(["make", "-o", f"{venv}/.installed", "mlflow-ui", f"VENV={venv}", f"MLFLOW_PORT={port}"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        health = answer(f"http://127.0.0.1:{port}/health")
        assert health == "OK", "MLflow's server did not answer on 127.0.0.1"
        api = (f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/alias?name={MODEL_NAME}"
               f"&alias={CHAMPION_ALIAS}")
        version = json.loads(urllib.request.urlopen(api, timeout=10).read())["model_version"]
        assert version["name"] == MODEL_NAME
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make, the server and its worker, by the process group started here
        server.wait(timeout=30)


def test_runs_and_versions_go_to_an_mlflow_server_given_by_its_uri(tmp_path):
    """MLFLOW_TRACKING_URI pointing at a real MLflow server (started here on loopback over its own store)."""
    from mlflow import MlflowClient

    from aerial_assets.tracking.mlflow_store import log_run, register_model

    port = free_port()
    env = {**os.environ, "AERIAL_DATA_ROOT": str(tmp_path / "server_root")}
    server = subprocess.Popen([sys.executable, "-m", "aerial_assets.tracking.ui", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert answer(f"http://127.0.0.1:{port}/health") == "OK"
        target = Target(f"http://127.0.0.1:{port}", "aerial_assets:/data/root", "served_model")
        check_reachable(target)  # answers: no error
        run = log_run(target, run_name="m|logistic_regression", params={"algorithm": "logistic_regression"},
                      metrics={"test_accuracy": 0.875}, tags={"dagster.partition": "m|logistic_regression"},
                      files={"per_class.md": b"| class |"})
        model = tmp_path / "model"
        model.mkdir()
        (model / "MLmodel").write_text("flavors: {}\n")
        version = register_model(target, str(model), run_name="champion m", params={}, metrics={}, tags={})
        client = MlflowClient(f"http://127.0.0.1:{port}")
        stored = client.get_run(run.run_id)
        assert stored.data.metrics["test_accuracy"] == 0.875 and stored.info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(run.run_id)] == ["per_class.md"]
        assert client.get_model_version_by_alias("served_model", CHAMPION_ALIAS).version == version.version
        assert run.url == f"http://127.0.0.1:{port}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_an_unreachable_tracking_server_is_one_line():
    port = free_port()  # nothing listens there
    with pytest.raises(ConfigurationError, match=rf"MLflow tracking server at http://127.0.0.1:{port} .* unreachable"):
        check_reachable(Target(f"http://user:secret@127.0.0.1:{port}", "e", "m"), timeout_s=5)
    try:
        check_reachable(Target(f"http://user:secret@127.0.0.1:{port}", "e", "m"), timeout_s=5)
    except ConfigurationError as exc:
        assert "secret" not in str(exc)


def test_make_run_stops_before_any_step_when_the_tracking_server_is_down(tmp_path, tiny_tiles):
    port = free_port()
    env = {**os.environ, "AERIAL_DATA_ROOT": str(tmp_path / "root"), "AERIAL_TRAINING_TILES": str(tiny_tiles),
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "DAGSTER_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", "--skip-counties"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"MLflow tracking server at http://127.0.0.1:{port} (MLFLOW_TRACKING_URI) is unreachable" in done.stderr
    assert not (tmp_path / "root" / "labeled_tiles").exists()  # no step ran


def test_mlflow_off_and_server_settings():
    off = build_defs({"AERIAL_DATA_ROOT": "/tmp/x", "AERIAL_MLFLOW": "0"}).resources["mlflow"]
    assert off.target() is None
    embedded = build_defs({"AERIAL_DATA_ROOT": "/tmp/x"}).resources["mlflow"].target()
    assert embedded.tracking_uri == "sqlite:////tmp/x/mlflow/mlflow.db" and embedded.experiment == "aerial_assets"
    # an Azure data root: the database local (SQLite), the artifacts in the data root where MLflow's Azure store can
    # authenticate (DefaultAzureCredential here; a connection string in test_azure's whole graph), else beside it
    azure = build_defs({"AERIAL_DATA_ROOT": "az://data/run1", "AZURE_STORAGE_ACCOUNT_NAME": "acct"}
                       ).resources["mlflow"].target()
    assert azure.tracking_uri == f"sqlite:///{os.path.abspath('.aerial_data')}/mlflow/mlflow.db"
    assert azure.artifact_root == "wasbs://data@acct.blob.core.windows.net/run1/mlflow/artifacts"
    assert azure.experiment == "aerial_assets:az://data/run1"  # the local database may serve several data roots
    keyed = build_defs({"AERIAL_DATA_ROOT": "az://data/run1", "AZURE_STORAGE_ACCOUNT_NAME": "acct",
                        "AZURE_STORAGE_ACCOUNT_KEY": "a2V5a2V5a2V5"}).resources["mlflow"].target()
    assert keyed.artifact_root.startswith("file://") and "a2V5" not in repr(keyed)
