"""A client of one Spark line against a real standalone master of the other line (started from the other line's
venv, ``make install PYSPARK=3.5.9`` beside the default one): the session fails at start, in one line naming both
versions and the command that installs the matching line, before any RPC to the master."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from aerial_assets.defs.resources import SparkResource
from aerial_assets.errors import ConfigurationError
from aerial_assets.spark.lines import client_version, line_of, standalone_master_version
from aerial_assets_tests.standalone_cluster import StandaloneCluster

REPO = Path(__file__).resolve().parents[2]


def other_line_home() -> tuple[str, str]:
    """(SPARK_HOME, version) of a pyspark of another line in one of the checkout's venvs; skip when there is none."""
    for version_file in sorted(REPO.glob(".venv*/lib/python3*/site-packages/pyspark/version.py")):
        found = re.search(r"__version__[^=]*=\s*[\"']([^\"']+)", version_file.read_text())
        if found and line_of(found.group(1)) != line_of(client_version()):
            return str(version_file.parent), found.group(1)
    pytest.skip("no venv of the other Spark line here (make install PYSPARK=3.5.9 builds one beside .venv)")


def test_a_master_of_another_line_is_refused_at_session_start(tmp_path):
    home, version = other_line_home()
    with StandaloneCluster(tmp_path / "cluster", workers=0, spark_home=home) as cluster:
        assert standalone_master_version(cluster.url, cluster.ui_port) == version  # the real master's own page
        resource = SparkResource(master=cluster.url, conf={"spark.master.ui.port": str(cluster.ui_port)})
        resource.setup_for_execution(None)
        started = time.monotonic()
        with pytest.raises(ConfigurationError) as info:
            resource.session  # noqa: B018 - opening the session is what is tested
        assert time.monotonic() - started < 30
    text = str(info.value)
    assert f"the standalone master {cluster.url} runs Spark {version}" in text
    assert f"this client is pyspark {client_version()}" in text and f"make install PYSPARK={version}" in text
