"""The whole graph on a real YARN (``-m yarn``): a ResourceManager, three single-core NodeManagers and HDFS, Hadoop's own
servers on 127.0.0.1 (``aerial_assets_tests/yarn_cluster.py``), with the driver in client mode, as HDInsight runs
notebooks and ``spark-submit``. Compared with local mode; where tasks ran is read from Spark's event log and from
YARN's own container records.

One NodeManager holds the application master (a client-mode application's ``ExecutorLauncher`` takes a vcore), the
two others one single-core executor each, so the executors land on two NodeManagers whatever order YARN offers them.
The executors' Python is the venv's interpreter without this project on its path (``-S``, the packages given through
``PYTHONPATH``): the project's code reaches them only as the package zip the session ships.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aerial_assets.spark.synapseml import synapseml_jars
from aerial_assets_tests import netns
from aerial_assets_tests.spark.test_cluster import _predictions
from aerial_assets_tests.standalone_cluster import assert_every_heavy_stage_ran_on_every_executor, event_log
from aerial_assets_tests.yarn_cluster import NODES_FILE, YarnCluster, jars_present

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.yarn, pytest.mark.slow]


@pytest.fixture(scope="module")
def yarn(tmp_path_factory):
    if not jars_present():
        pytest.skip("no YARN jars: `make yarn-jars` (Maven) fetches them; `make test` does when mvn is present")
    with YarnCluster(tmp_path_factory.mktemp("yarn"), node_managers=3, vcores=1, memory_mb=2560) as cluster:
        yield cluster


def python_without_project(folder: Path) -> Path:
    """An interpreter for the executors that has the venv's third-party packages and not this project: ``-S`` skips
    the site module, so the editable install's ``.pth`` never runs, and the venv's site-packages come through
    ``PYTHONPATH`` (after what Spark puts there)."""
    script = folder / "python-without-project"
    site = sysconfig.get_paths()["purelib"]
    script.write_text(f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site}" exec "{sys.executable}" -S "$@"\n')
    script.chmod(0o755)
    return script


def test_the_cluster_listens_on_loopback_only(yarn):
    """Every socket the cluster's JVM listens on is bound to 127.0.0.1 (read from /proc, not from its settings)."""
    inodes = set()
    for fd in Path(f"/proc/{yarn.proc.pid}/fd").iterdir():
        match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd)) if fd.is_symlink() else None
        if match:
            inodes.add(match.group(1))
    listening = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening.append(fields[1].split(":")[0])
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, as IPv4 and IPv4-mapped IPv6
    assert len(listening) >= 8, listening  # RM (5), 3 NodeManagers, NameNode, DataNode at least
    assert set(listening) <= loopback, listening


def test_whole_graph_on_yarn_in_client_mode(graph_run, tiny_tiles, tmp_path):
    """On the line whose SynapseML jars ``make jars`` fetched (3.5), ``lightgbm`` trains on the cluster too, all of
    it inside a private network namespace (LightGBM listens on every interface; :mod:`aerial_assets_tests.netns`)."""
    if not jars_present():
        pytest.skip("no YARN jars: `make yarn-jars` (Maven) fetches them; `make test` does when mvn is present")
    lightgbm = bool(synapseml_jars()) and netns.available()
    root = tmp_path / "yarn_root"
    registry = tmp_path / "counties.yaml"
    local_registry = yaml.safe_load((graph_run["root"] / "counties.yaml").read_text())
    registry.write_text(yaml.safe_dump({"counties": {"tiny": local_registry["counties"]["tiny"]}}))
    events = tmp_path / "events"
    events.mkdir()
    python = python_without_project(tmp_path)
    # (from a folder outside the checkout, as a container's is)
    assert subprocess.run([str(python), "-c", "import numpy, onnxruntime, pyarrow"], cwd=tmp_path).returncode == 0
    assert subprocess.run([str(python), "-c", "import aerial_assets"], cwd=tmp_path,
                          capture_output=True).returncode != 0
    conf = {
        "spark.eventLog.enabled": "true", "spark.eventLog.dir": f"file://{events}", "spark.eventLog.compress": "false",
        "spark.executor.instances": "2", "spark.executor.cores": "1", "spark.executor.memory": "1g",
        "spark.yarn.am.memory": "512m",
        "spark.scheduler.minRegisteredResourcesRatio": "1.0", "spark.scheduler.maxRegisteredResourcesWaitingTime": "180s",
    }
    env = {**os.environ, "PYSPARK_PYTHON": str(python), "AERIAL_DATA_ROOT": str(root),
           "AERIAL_TRAINING_TILES": str(tiny_tiles), "AERIAL_COUNTIES": str(registry),
           "AERIAL_SPARK_DRIVER_MEMORY": "1g"}
    env.pop("DAGSTER_HOME", None)
    algorithms = "linear_discriminant,lightgbm" if lightgbm else "linear_discriminant"
    # 30 training tiles over 2 executors: LightGBM's default of 20 rows per leaf would allow no split at all
    settings = tmp_path / "settings.yaml"
    settings.write_text("ops: {land_use_classifiers: {config: {gbm_min_data_in_leaf: 2}}}\n")
    folder = tmp_path / "yarn"
    run = [sys.executable, "-m", "aerial_assets_tests.yarn_cluster", "run", "--folder", str(folder),
           "--node-managers", "3", "--vcores", "1", "--memory-mb", "2560", *(f"--conf={k}={v}" for k, v in conf.items()),
           "--", sys.executable, "-m", "aerial_assets.defs.run", "--preset", "fast", "--backbones", "mobilenet_v2",
           "--algorithms", algorithms, "--config", str(settings)]
    done = subprocess.run(netns.command(run) if lightgbm else run, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1500)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    # the same leaderboard and predictions as local mode
    board = pd.read_csv(root / "model_leaderboard" / "leaderboard.csv").set_index(["backbone", "algorithm"])
    local_board = pd.read_csv(graph_run["root"] / "model_leaderboard" / "leaderboard.csv").set_index(
        ["backbone", "algorithm"])
    cols = ["accuracy", "macro_f1", "n_train", "n_test", "val_macro_f1"]
    shared = board.index.intersection(local_board.index)
    assert list(shared) == [("mobilenet_v2", "linear_discriminant")]
    pd.testing.assert_frame_equal(board.loc[shared, cols], local_board.loc[shared, cols])
    if lightgbm:  # trained by LightGBM across the two executors, compared with the others
        assert board.loc[("mobilenet_v2", "lightgbm"), "accuracy"] >= 0.8, board
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    assert champion["algorithm"] in algorithms.split(",")
    remote, local = _predictions(root, "tiny"), _predictions(graph_run["root"], "tiny")
    assert list(remote.index) == list(local.index)
    if champion["algorithm"] == "linear_discriminant":
        assert (remote["predicted_label"] == local["predicted_label"]).all()
    else:
        assert (remote["predicted_label"] == local["predicted_label"]).mean() >= 0.8

    # Spark's record: two executors, and every heavy stage ran tasks on both
    log = event_log(events)
    assert_every_heavy_stage_ran_on_every_executor(log, ("featurizing with", "scoring tiny"), 2)
    # ... each in a YARN container of a NodeManager of its own (its log URL names the NodeManager's web port)
    added = [e for e in log if e.get("Event") == "SparkListenerExecutorAdded"]
    node_ports = {port for _, port in json.loads((folder / NODES_FILE).read_text())}
    log_ports = {int(re.search(r"//[^/:]+:(\d+)/", e["Executor Info"]["Log Urls"]["stderr"]).group(1)) for e in added}
    assert len(log_ports) == 2 and log_ports <= node_ports, (log_ports, node_ports)
    # YARN's own record: the application's containers, on all three NodeManagers (the master's and two executors')
    apps = {e["App ID"] for e in log if e.get("Event") == "SparkListenerApplicationStart"}
    assert len(apps) == 1 and next(iter(apps)).startswith("application_"), apps
    containers = YarnCluster(folder, node_managers=3).container_dirs(next(iter(apps)))
    assert sorted(len(found) for found in containers.values()) == [1, 1, 1], containers
    launched = [c for found in containers.values() for c in found if (c / "stderr").exists()
                and "Successfully registered with driver" in (c / "stderr").read_text(errors="replace")]
    assert len(launched) == 2, containers
