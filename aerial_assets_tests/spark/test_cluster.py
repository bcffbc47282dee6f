"""The whole graph on a real multi-process Spark standalone cluster (a master and single-core workers, separate JVMs
on 127.0.0.1, started from the installed pyspark), compared with local mode, with where tasks ran read from Spark's
own event log.

The graph runs in a subprocess (``python -m aerial_assets.defs.run``, as a user runs it): the test process already holds
a local session, and a driver talks to one master. Settings reach Spark the way a cluster user gives them, through
``SPARK_CONF_DIR/spark-defaults.conf``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from aerial_assets.spark.jobs import StageProgress, task_count, tiles_done
from aerial_assets_tests.standalone_cluster import (
    StandaloneCluster,
    assert_every_heavy_stage_ran_on_every_executor,
    event_log,
    executors,
    heavy_stages,
    spark_conf_dir,
)

REPO = Path(__file__).resolve().parents[2]

ONLY_FEATURES = """
import os, sys
from dagster import DagsterInstance
from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.run import Runner

with DagsterInstance.ephemeral() as instance:
    ok = Runner(build_defs(os.environ), instance, {}).run(["tile_features"], "mobilenet_v2")
sys.exit(0 if ok else 1)
"""


def test_task_count_follows_rows_and_slots():
    assert task_count(48, 2) == 2  # tiny data: one task per slot
    assert task_count(10_000, 2) == 40  # local[2]: a few dozen tasks of ~256 tiles
    assert task_count(10_000, 3) == 42  # whole waves of 3 slots
    assert task_count(160_000_000, 40 * 16) % 640 == 0 and task_count(160_000_000, 640) >= 625_000
    assert task_count(0, 4) == 4


def test_progress_is_read_from_the_widest_stage():
    stages = [StageProgress(0, 2, 2), StageProgress(1, 40, 10)]  # the catalog's shuffle map stage, the work
    assert tiles_done(stages, 10_000) == (2500, 10, 40)
    assert tiles_done([], 10) == (0, 0, 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with StandaloneCluster(tmp_path_factory.mktemp("cluster"), workers=3, cores=1) as running:
        yield running


def _env(cluster: StandaloneCluster, root: Path, tiles: Path, registry: Path, events: Path,
         cores: int) -> dict[str, str]:
    events.mkdir(parents=True, exist_ok=True)
    conf = spark_conf_dir(root.parent / f"{root.name}-conf", {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": f"file://{events}",
        "spark.eventLog.compress": "false",
        "spark.executor.memory": "1g",
        # start the work once every worker's executor is registered, so that all of them can take tasks
        "spark.cores.max": str(cores),
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
    })
    env = {**os.environ, "AERIAL_SPARK_MASTER": cluster.url, "SPARK_CONF_DIR": str(conf),
           "AERIAL_DATA_ROOT": str(root), "AERIAL_TRAINING_TILES": str(tiles), "AERIAL_COUNTIES": str(registry),
           "PYSPARK_PYTHON": sys.executable, "AERIAL_SPARK_DRIVER_MEMORY": "1g"}
    env.pop("DAGSTER_HOME", None)
    return env


def _predictions(root: Path, county: str) -> pd.DataFrame:
    folder = root / "county_predictions" / county / "predictions.parquet"
    frame = pd.concat(pq.read_table(p).to_pandas() for p in sorted(folder.glob("*.parquet")))
    return frame.set_index("tile_id").sort_index()


def test_whole_graph_on_a_three_worker_cluster(cluster, graph_run, tiny_tiles, tmp_path):
    root = tmp_path / "cluster_root"
    registry = tmp_path / "counties.yaml"
    local_registry = yaml.safe_load((graph_run["root"] / "counties.yaml").read_text())
    registry.write_text(yaml.safe_dump({"counties": {"tiny": local_registry["counties"]["tiny"]}}))
    events = tmp_path / "events"
    env = _env(cluster, root, tiny_tiles, registry, events, cores=3)
    # one algorithm keeps the test short; every heavy stage (featurize, train, score, map) still runs on the cluster.
    # The discriminant: its fit sums partial matrices on the executors and adds them up there (discriminant.py)
    selection = ["--preset", "fast", "--backbones", "mobilenet_v2", "--algorithms", "linear_discriminant"]
    done = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", *selection], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    # progress comes from Spark's own counters while the one featurization job runs
    assert "featurizing with mobilenet_v2: ~" in output and "Spark tasks done" in output

    # the same leaderboard and predictions as local mode
    board = pd.read_csv(root / "model_leaderboard" / "leaderboard.csv").set_index(["backbone", "algorithm"])
    local_board = pd.read_csv(graph_run["root"] / "model_leaderboard" / "leaderboard.csv").set_index(
        ["backbone", "algorithm"])
    cols = ["accuracy", "macro_f1", "n_train", "n_test", "val_macro_f1"]
    pd.testing.assert_frame_equal(board.sort_index()[cols], local_board.loc[board.index].sort_index()[cols])
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    local_champion = json.loads((graph_run["root"] / "champion_model" / "champion.json").read_text())
    assert champion["algorithm"] == local_champion["algorithm"] == "linear_discriminant"
    remote, local = _predictions(root, "tiny"), _predictions(graph_run["root"], "tiny")
    assert list(remote.index) == list(local.index)
    assert (remote["predicted_label"] == local["predicted_label"]).all()

    # every heavy stage ran tasks on every executor (Spark's event log, not the project's counters)
    log = event_log(events)
    assert_every_heavy_stage_ran_on_every_executor(log, ("featurizing with", "scoring tiny"), 3)
    three_workers = heavy_stages(log, "featurizing with")[0].num_tasks
    # the workers launched this application's executors with the C2 thresholds (session.py), as each logged it
    apps = {e["App ID"] for e in log if e.get("Event") == "SparkListenerApplicationStart"}
    launched = [line for app in apps for err in sorted(cluster.folder.glob(f"worker*/{app}/*/stderr"))
                for line in err.read_text().splitlines() if line.startswith("Spark Executor Command:")]
    assert len(launched) == 3 and all('"-XX:Tier4InvocationThreshold=20000"' in line for line in launched), launched

    # the featurization job is as wide as the cluster: fewer workers, fewer tasks
    cluster.stop_workers(keep=1)
    one_events = tmp_path / "events_one_worker"
    script = tmp_path / "only_features.py"
    script.write_text(ONLY_FEATURES)
    again = subprocess.run([sys.executable, str(script)], cwd=REPO,
                           env=_env(cluster, root, tiny_tiles, registry, one_events, cores=1),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    one_log = event_log(one_events)
    assert len(executors(one_log)) == 1
    one_worker = heavy_stages(one_log, "featurizing with")[0].num_tasks
    assert three_workers == 3 and one_worker == 2, (three_workers, one_worker)  # 2: Spark's floor for a cluster
