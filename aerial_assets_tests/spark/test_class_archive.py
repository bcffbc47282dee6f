"""The Spark driver's class-data-sharing archive (``make install`` builds it): used when it fits, harmless when not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aerial_assets.spark.class_archive import QUIET, archive_path, driver_java_options

# A session opened exactly as the graph's resource opens it (session_conf), plus a class-loading log, or with the
# archive flags replaced by ``sys.argv[3]``; it runs a job and prints the count.
_SESSION = textwrap.dedent("""
    import sys
    from pyspark.sql import SparkSession
    from aerial_assets.spark.session import LOCAL_DRIVER_JAVA_OPTIONS, SparkSettings, session_conf

    conf = session_conf(SparkSettings())
    if len(sys.argv) > 2:
        conf["spark.driver.defaultJavaOptions"] = f"{LOCAL_DRIVER_JAVA_OPTIONS} {sys.argv[2]}"
    conf["spark.driver.extraJavaOptions"] = f"-Xlog:class+load=info:file={sys.argv[1]}"
    spark = SparkSession.builder.config(map=conf).getOrCreate()
    print("COUNT", spark.range(1000).selectExpr("id % 7 AS k").groupBy("k").count().count(), flush=True)
    spark.stop()
""")


def _session(log: Path, archive_flags: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", _SESSION, str(log), *([archive_flags] if archive_flags is not None else [])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYSPARK_PYTHON": sys.executable})


def _sources(log: Path) -> tuple[int, int]:
    """Spark's classes (org.apache.spark) mapped from the archive, and read from its jars, in a ``-Xlog:class+load``
    file. Lambdas and generated classes (whose source is their host class) are neither."""
    spark = [line for line in log.read_text().splitlines() if " org.apache.spark." in line]
    from_jars = sum(" source: file:" in line or " source: jar:" in line for line in spark)
    return sum("shared objects file (top)" in line for line in spark), from_jars


def test_the_archive_name_follows_spark_its_configuration_folder_and_the_jdk(tmp_path):
    base = {"PATH": os.environ.get("PATH", ""), "SPARK_HOME": str(tmp_path / "spark")}
    names = {archive_path(base, str(tmp_path)),
             archive_path({**base, "SPARK_HOME": str(tmp_path / "other_spark")}, str(tmp_path)),
             archive_path({**base, "SPARK_CONF_DIR": str(tmp_path / "conf")}, str(tmp_path)),
             archive_path({**base, "JAVA_HOME": str(tmp_path / "jdk")}, str(tmp_path))}
    assert len(names) == 4, names
    assert archive_path(base, str(tmp_path)) == archive_path(dict(base), str(tmp_path))
    assert driver_java_options(base, str(tmp_path)) == ""  # nothing built: no flags
    Path(archive_path(base, str(tmp_path))).write_bytes(b"")
    assert driver_java_options(base, str(tmp_path)) == f"-XX:SharedArchiveFile={archive_path(base, str(tmp_path))} {QUIET}"
    assert driver_java_options({**base, "AERIAL_JVM_ARCHIVE": "off"}, str(tmp_path)) == ""


@pytest.mark.slow
def test_the_driver_maps_sparks_classes_from_the_archive_that_make_install_built(tmp_path):
    assert driver_java_options(), (f"no class archive at {archive_path()}: `make install` builds it "
                                   "(`make jvm-archive` rebuilds it)")
    log = tmp_path / "classes.log"
    run = _session(log)
    assert run.returncode == 0 and "COUNT 7" in run.stdout, run.stderr[-3000:]
    shared, from_jars = _sources(log)
    assert shared > 3000 and shared > 20 * from_jars, (shared, from_jars)  # nearly all came from the archive


@pytest.mark.slow
def test_a_foreign_or_broken_archive_costs_time_only(tmp_path):
    broken = tmp_path / "broken.jsa"
    broken.write_bytes(os.urandom(1 << 20))
    log = tmp_path / "classes.log"
    run = _session(log, f"-XX:SharedArchiveFile={broken} {QUIET}")
    assert run.returncode == 0 and "COUNT 7" in run.stdout, run.stderr[-3000:]
    assert "shared archive" not in run.stderr.lower() and "[cds" not in run.stderr, run.stderr[-3000:]
    shared, from_jars = _sources(log)
    assert shared == 0 and from_jars > 3000, (shared, from_jars)  # read from the jars, as without an archive
