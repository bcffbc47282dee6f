"""Faults a careless user or a broken service causes: a tile that disappears after the catalog, an unreachable Spark
Connect endpoint, and what a local run listens on."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from dagster import instance_for_test

from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.resources import SparkResource
from aerial_assets.defs.run import Runner
from aerial_assets.errors import ConfigurationError
from aerial_assets_tests.conftest import env_for
from aerial_assets_tests.standalone_cluster import free_port

REPO = Path(__file__).resolve().parents[2]


def test_a_tile_deleted_after_the_catalog_is_quarantined_by_tile_features(spark, tiny_tiles, tmp_path):
    tiles = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, tiles)
    root = tmp_path / "root"
    with instance_for_test() as instance:
        runner = Runner(build_defs(env_for(root, tiles)), instance, {})
        assert runner.run(["labeled_tiles"])
        catalog = pd.read_parquet(root / "labeled_tiles" / "catalog.parquet")
        victim = catalog[(catalog["status"] == "ok") & (catalog["split"] == "train")].iloc[0]
        os.remove(victim["uri"])
        assert runner.run(["backbone_models", "tile_features"], "mobilenet_v2")
    bad = pd.read_csv(root / "tile_features" / "mobilenet_v2" / "quarantine.csv")
    assert bad["tile_id"].tolist() == [victim["tile_id"]] and "no file" in bad["reason"].iloc[0]
    features = pd.read_parquet(root / "tile_features" / "mobilenet_v2" / "features.parquet")
    assert (features["status"] == "ok").sum() == (catalog["status"] == "ok").sum() - 1


def test_an_unreachable_spark_remote_fails_fast_in_one_line_without_the_token():
    port = free_port()  # bound, then closed: nothing listens there
    resource = SparkResource(remote=f"sc://127.0.0.1:{port}", remote_token="tok-3f9a2b7c1d")
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=rf"sc://127\.0\.0\.1:{port} \(SPARK_REMOTE\) is unreachable") as err:
        resource.session  # noqa: B018 - opening the session is the act under test
    assert time.monotonic() - started < 15
    assert "tok-3f9a2b7c1d" not in str(err.value) and "\n" not in str(err.value)


LISTENERS = """
import psutil
from aerial_assets.defs.resources import SparkResource

spark = SparkResource(master="local[2]", driver_memory="1g").session
assert spark.range(100).repartition(4).count() == 100  # executors, shuffle and Python-free tasks all ran
listening = set()
for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    for conn in proc.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN:
            listening.add(conn.laddr.ip)
print("LISTENING", sorted(listening))
"""


def test_local_spark_listens_on_loopback_only(tmp_path):
    script = tmp_path / "listeners.py"
    script.write_text(LISTENERS)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("LISTENING"))
    addresses = ast.literal_eval(line[len("LISTENING "):])
    assert addresses, "the Spark driver listens somewhere; the probe must have seen it"
    assert set(addresses) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, addresses
