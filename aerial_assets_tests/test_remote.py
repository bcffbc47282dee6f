"""Remote mode: the whole graph over a real Spark Connect server (started here on 127.0.0.1 from the installed
pyspark), with the same results as local mode.

The graph runs in a subprocess: a Spark Connect session switches the whole Python process to Connect mode,
which must not leak into the other tests' classic session.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pyspark
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    home = os.path.dirname(pyspark.__file__)
    port = _free_port()
    log = open(tmp_path_factory.mktemp("connect") / "server.log", "w")
    env = {**os.environ, "SPARK_HOME": home, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.Popen(
        [os.path.join(home, "bin", "spark-submit"), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
         "--master", "local[2]", "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
         "--conf", f"spark.connect.grpc.binding.port={port}", "--conf", "spark.ui.enabled=false",
         "--conf", "spark.sql.shuffle.partitions=2"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"Spark Connect server exited; see {log.name}"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        else:
            raise TimeoutError("Spark Connect server did not start")
        yield f"sc://127.0.0.1:{port}", Path(log.name)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _predictions(root: Path, county: str) -> pd.DataFrame:
    folder = root / "county_predictions" / county / "predictions.parquet"
    frame = pd.concat(pq.read_table(p).to_pandas() for p in sorted(folder.glob("*.parquet")))
    return frame.set_index("tile_id").sort_index()


def test_whole_graph_over_spark_connect_matches_local_mode(connect_server, graph_run, tiny_tiles, tmp_path):
    url, server_log = connect_server
    root = tmp_path / "remote_root"
    registry = tmp_path / "counties.yaml"
    local_registry = yaml.safe_load((graph_run["root"] / "counties.yaml").read_text())
    registry.write_text(yaml.safe_dump({"counties": {"tiny": local_registry["counties"]["tiny"]}}))
    env = {**os.environ, "SPARK_REMOTE": url, "AERIAL_DATA_ROOT": str(root),
           "AERIAL_TRAINING_TILES": str(tiny_tiles), "AERIAL_COUNTIES": str(registry),
           "PYSPARK_PYTHON": sys.executable}
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run([sys.executable, "-m", "aerial_assets.run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = server_log.read_text()
    # the work went through the server: a Connect session and many executed plans
    assert "SparkConnectSessionManager" in log and log.count("SparkConnectExecutionManager") > 50
    remote_board = pd.read_csv(root / "model_leaderboard" / "leaderboard.csv").set_index(["backbone", "algorithm"])
    local_board = pd.read_csv(graph_run["root"] / "model_leaderboard" / "leaderboard.csv").set_index(
        ["backbone", "algorithm"])
    cols = ["accuracy", "macro_f1", "n_train", "n_test", "val_macro_f1"]
    pd.testing.assert_frame_equal(remote_board.sort_index()[cols], local_board.sort_index()[cols])
    remote, local = _predictions(root, "tiny"), _predictions(graph_run["root"], "tiny")
    assert list(remote.index) == list(local.index)
    assert (remote["predicted_label"] == local["predicted_label"]).all()
