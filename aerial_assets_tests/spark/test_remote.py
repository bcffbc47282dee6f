"""Remote mode: the whole graph over a real Spark Connect server (started here on 127.0.0.1 from the installed
pyspark), with the same results as local mode.

The server's Python workers run through a guard (``PYSPARK_PYTHON`` is a wrapper script) that refuses to import
``aerial_assets`` from this checkout or its editable install, so the graph only works because the driver ships
the package to the session (``addArtifacts``), as it must for a real cluster. Worker reuse is off so that no
worker keeps a module imported for another session. The graph runs in a subprocess: a Spark Connect session
switches the whole Python process to Connect mode, which must not leak into the other tests' classic session.
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

from aerial_assets.spark.lines import connect_runs_pyspark_ml
from aerial_assets.training.classifiers import PYSPARK_ML_ALGORITHMS

REPO = Path(__file__).resolve().parents[2]

GUARD = """
import importlib.abc, importlib.machinery, os, runpy, sys

BLOCKED = os.path.realpath(os.environ["AERIAL_BLOCKED_SOURCE"])


def _blocked(path):
    path = os.path.realpath(path or ".")
    return path == BLOCKED or path.startswith(BLOCKED + os.sep)


class Guard(importlib.abc.MetaPathFinder):
    # aerial_assets may only come from a path outside the checkout (the shipped zip), never from the checkout
    # itself, the editable install's finder or the working directory.
    def find_spec(self, name, path=None, target=None):
        if name != "aerial_assets" and not name.startswith("aerial_assets."):
            return None
        search = [p for p in (sys.path if path is None else path) if not _blocked(p)]
        spec = importlib.machinery.PathFinder.find_spec(name, search)
        if spec is None or (spec.origin and _blocked(spec.origin)):
            raise ModuleNotFoundError(f"{name} is blocked on this worker by the test: it must be shipped")
        return spec


sys.meta_path.insert(0, Guard())
with open(os.environ["AERIAL_GUARD_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:1] == ["-m"]:
    sys.argv = args[1:]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
"""


def connect_server_jars(home: str) -> list[str]:
    """``--jars`` for the Connect server: none where the installed pyspark ships it (4.x); the 3.5 line's pip
    package lacks it, and ``make jars PYSPARK=3.5.x`` fetches it (pom-spark3.5.xml)."""
    if list(Path(home, "jars").glob("spark-connect_*.jar")):
        return []
    found = sorted((REPO / ".cache" / "jars-spark3.5").glob("spark-connect_*.jar"))
    if not found:
        pytest.skip(f"pyspark {pyspark.__version__} has no Spark Connect server: make jars PYSPARK={pyspark.__version__}")
    return ["--jars", str(found[-1])]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    home = os.path.dirname(pyspark.__file__)
    port = _free_port()
    folder = tmp_path_factory.mktemp("connect")
    log = open(folder / "server.log", "w")
    (folder / "guard.py").write_text(GUARD)
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{folder / "guard.py"}" "$@"\n')
    wrapper.chmod(0o755)
    guard_log = folder / "workers.log"
    env = {**os.environ, "SPARK_HOME": home, "PYSPARK_PYTHON": str(wrapper), "AERIAL_BLOCKED_SOURCE": str(REPO),
           "AERIAL_GUARD_LOG": str(guard_log)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [os.path.join(home, "bin", "spark-submit"), *connect_server_jars(home),
         "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
         "--master", "local[2]", "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
         "--conf", f"spark.connect.grpc.binding.port={port}", "--conf", "spark.ui.enabled=false",
         "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.python.worker.reuse=false"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
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
        yield f"sc://127.0.0.1:{port}", Path(log.name), guard_log
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


SHIPPING_PROBE = """
import sys
import pandas as pd
from aerial_assets.imagery.catalog import INSPECT_SCHEMA, inspect_frames
from aerial_assets.defs.resources import SparkResource

spark = SparkResource(remote=sys.argv[1], ship_code=sys.argv[2] == "ship")
frame = spark.session.createDataFrame(pd.DataFrame({"tile_id": ["t"], "uri": [sys.argv[3]]}))
print(frame.mapInPandas(inspect_frames(64), INSPECT_SCHEMA).toPandas().to_dict("records"))
"""


def test_project_code_reaches_executors_only_by_shipping(connect_server, tiny_tiles, tmp_path):
    """Negative control first: without shipping, the guarded workers cannot import the project (this runs before
    any session ships it); with shipping, the same UDF runs and decodes a tile."""
    if not connect_runs_pyspark_ml():
        pytest.skip("this client's Spark Connect sessions are refused (pyspark.ml over Connect is 4.0+); the refusal "
                    "is tested by test_whole_graph_over_spark_connect_matches_local_mode")
    url, _, guard_log = connect_server
    tile = next(p for p in sorted(tiny_tiles.rglob("*.png")))
    probe = tmp_path / "probe.py"
    probe.write_text(SHIPPING_PROBE)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env.pop("DAGSTER_HOME", None)
    bare = subprocess.run([sys.executable, str(probe), url, "bare", str(tile)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert bare.returncode != 0 and "blocked on this worker by the test" in bare.stderr, bare.stderr[-3000:]
    shipped = subprocess.run([sys.executable, str(probe), url, "ship", str(tile)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert shipped.returncode == 0, shipped.stdout[-2000:] + shipped.stderr[-3000:]
    assert "'status': 'ok'" in shipped.stdout and "'width': 64" in shipped.stdout
    assert "pyspark.daemon" in guard_log.read_text()  # the workers did start through the guard


def test_whole_graph_over_spark_connect_matches_local_mode(connect_server, graph_run, tiny_tiles, tmp_path):
    url, server_log, guard_log = connect_server
    root = tmp_path / "remote_root"
    registry = tmp_path / "counties.yaml"
    local_registry = yaml.safe_load((graph_run["root"] / "counties.yaml").read_text())
    registry.write_text(yaml.safe_dump({"counties": {"tiny": local_registry["counties"]["tiny"]}}))
    env = {**os.environ, "SPARK_REMOTE": url, "AERIAL_DATA_ROOT": str(root),
           "AERIAL_TRAINING_TILES": str(tiny_tiles), "AERIAL_COUNTIES": str(registry),
           "PYSPARK_PYTHON": sys.executable}
    env.pop("DAGSTER_HOME", None)
    # the same selection as the local graph_run fixture, whatever make run's defaults are
    selection = ["--preset", "fast", "--backbones", "mobilenet_v2", "--algorithms", ",".join(PYSPARK_ML_ALGORITHMS)]
    done = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", *selection], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    if not connect_runs_pyspark_ml():  # the 3.5 line: refused before any step, in one line (a configuration error)
        assert done.returncode == 2 and "cannot run pyspark.ml over Spark Connect" in done.stderr, done.stderr[-3000:]
        assert "Spark Connect needs the 4.x line (make install PYSPARK=4.3.0)" in done.stderr
        assert not (root / "tile_features").exists()
        return
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # progress of the one featurization job reaches the run log over Connect too (registerProgressHandler)
    assert "featurizing with mobilenet_v2: " in done.stdout + done.stderr
    log = server_log.read_text()
    # the work went through the server: a Connect session and many executed plans
    assert "SparkConnectSessionManager" in log and log.count("SparkConnectExecutionManager") > 50
    # the UDFs ran in guarded workers, which can only import the project from the shipped zip
    assert guard_log.read_text().count("pyspark.daemon") >= 1 and "aerial_assets-" in log
    remote_board = pd.read_csv(root / "model_leaderboard" / "leaderboard.csv").set_index(["backbone", "algorithm"])
    local_board = pd.read_csv(graph_run["root"] / "model_leaderboard" / "leaderboard.csv").set_index(
        ["backbone", "algorithm"])
    cols = ["accuracy", "macro_f1", "n_train", "n_test", "val_macro_f1"]
    pd.testing.assert_frame_equal(remote_board.sort_index()[cols], local_board.sort_index()[cols])
    remote, local = _predictions(root, "tiny"), _predictions(graph_run["root"], "tiny")
    assert list(remote.index) == list(local.index)
    assert (remote["predicted_label"] == local["predicted_label"]).all()
