"""A class-data-sharing archive of the Spark driver JVM's classes: a local Spark session starts in about half the time.

Every ``make run`` stage, every partition a UI backfill launches and every graph run of the tests opens a Spark
session, and on the 2-core machine the driver JVM took 4.5-7.5 s to come up and 4-6 s more for its first jobs,
most of it loading, verifying and linking Spark's classes from some 250 jars. Java's application class-data sharing
(AppCDS, JDK 13+) maps those classes ready-made from an archive instead. ``make install`` runs a representative
Spark workload once with ``-XX:ArchiveClassesAtExit`` (:func:`build`), and every later driver JVM is started with
``-XX:SharedArchiveFile`` (:func:`driver_java_options`, which :func:`aerial_assets.spark.session.classic_conf` adds
for local masters; on a cluster the driver's default JVM options belong to the cluster's administrators).

Written here because no library does it: Spark has no setting for it; it is plain JVM flags plus a file.

Safe by construction: the JVM checks the archive's header against its own build and the class path it was dumped
with, and runs without it when anything differs (the ``cds`` log is switched off so that this costs nothing but
time). The file name carries pyspark's version and a digest of the Spark home, its configuration folder (the
first entry of the driver's class path) and the ``java`` binary, so a new JDK, Spark or ``SPARK_CONF_DIR`` looks
for a new file rather than finding a stale one (``make jvm-archive`` builds one for the current environment).
Local Spark only: a cluster's executors start on other machines, where the file does not exist, and over Spark
Connect there is no local JVM.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping

from aerial_assets.settings import AerialSettings
from aerial_assets.spark import PROJECT_CACHE

CACHE_DIR = os.path.join(PROJECT_CACHE, "jvm")
#: without these the JVM prints a warning for a stale or foreign archive on every start; it then runs without it
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def spark_home(env: Mapping[str, str]) -> str:
    """The Spark whose jars the driver JVM loads: ``SPARK_HOME``, else the installed pyspark (as pyspark decides)."""
    if env.get("SPARK_HOME"):
        return os.path.realpath(env["SPARK_HOME"])
    import pyspark

    return os.path.realpath(os.path.dirname(pyspark.__file__))


def spark_conf_dir(env: Mapping[str, str]) -> str:
    """The folder spark-submit reads ``spark-defaults.conf`` from: ``SPARK_CONF_DIR``, else the Spark's ``conf``."""
    return os.path.realpath(env.get("SPARK_CONF_DIR") or os.path.join(spark_home(env), "conf"))


def java_binary(env: Mapping[str, str]) -> str:
    """The ``java`` that Spark's launch scripts run: ``$JAVA_HOME/bin/java``, else the one on ``PATH``."""
    if env.get("JAVA_HOME"):
        return os.path.realpath(os.path.join(env["JAVA_HOME"], "bin", "java"))
    found = shutil.which("java", path=env.get("PATH"))
    return os.path.realpath(found) if found else "java"


def archive_path(env: Mapping[str, str] | None = None, folder: str = CACHE_DIR) -> str:
    """Where the archive for this Spark and this JDK lives (whether or not it exists yet)."""
    import pyspark

    env = os.environ if env is None else env
    home = spark_home(env)
    # the driver's class path starts with the configuration folder; the JVM refuses an archive dumped with another
    digest = hashlib.sha256(f"{home}\n{spark_conf_dir(env)}\n{java_binary(env)}".encode()).hexdigest()[:12]
    return os.path.join(folder, f"spark-{pyspark.__version__}-{digest}.jsa")


def driver_java_options(env: Mapping[str, str] | None = None, folder: str = CACHE_DIR) -> str:
    """The driver's JVM flags that map the archive; empty when :func:`build` has not made one for this setup, or
    when ``AERIAL_JVM_ARCHIVE=off`` (to measure without it, or to rule it out)."""
    env = os.environ if env is None else env
    if not AerialSettings.from_env({k: v for k, v in env.items() if k == "AERIAL_JVM_ARCHIVE"}).jvm_archive:
        return ""
    path = archive_path(env, folder)
    return f"-XX:SharedArchiveFile={path} {QUIET}" if os.path.isfile(path) else ""


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def build(env: Mapping[str, str] | None = None, folder: str = CACHE_DIR, timeout: float = 600) -> str:
    """Make the archive for this Spark and JDK (about a minute) and return its path.

    The workload runs in a child process; the JVM dumps the archive when that process exits and closes its
    gateway, so the child's JVM is waited for before the file is moved into place (whole, under its final name).
    """
    env = dict(os.environ if env is None else env)
    final = archive_path(env, folder)
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as work:
        dump = os.path.join(work, "spark.jsa")
        env.setdefault("PYSPARK_PYTHON", sys.executable)
        argv = [sys.executable, "-m", "aerial_assets.spark.archive_workload", dump]
        child = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        pid = next((int(line.split()[1]) for line in child.stdout.splitlines() if line.startswith("JVM ")), None)
        if child.returncode != 0 or pid is None:
            raise RuntimeError(f"the Spark workload failed ({child.returncode}): {child.stderr.strip()[-2000:]}")
        if not _wait_gone(pid, timeout) or not os.path.isfile(dump):
            raise RuntimeError("the Spark JVM wrote no class archive when it exited")
        os.replace(dump, final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Spark driver's class-data-sharing archive.")
    parser.add_argument("--force", action="store_true", help="build it even if it exists")
    args = parser.parse_args(argv)
    path = archive_path()
    if os.path.isfile(path) and not args.force:
        print(f"JVM class archive: {path} (exists)")
        return 0
    started = time.monotonic()
    try:
        path = build()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"warning: no JVM class archive, Spark sessions start slower: {exc}", file=sys.stderr)
        return 1
    print(f"JVM class archive: {path} ({os.path.getsize(path) / 2**20:.0f} MiB, {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
