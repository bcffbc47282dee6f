"""What a classic Spark session is opened with, and opening it early. No Dagster import.

A local Spark session costs seconds before any work: the JVM starts and the SparkContext comes up (5.4-7.5 s
measured on the 2-core machine). ``make run`` needs Spark in nearly every run, so once its settings are checked
(a configuration error must stay one line on stderr, without the JVM's start-up warnings) :func:`start_early`
starts the session in a background thread, with exactly the settings :class:`aerial_assets.defs.resources.SparkResource`
opens it with (both take them from :func:`session_conf`). The JVM then comes up while Dagster opens its instance,
resolves the job and starts the first run; the resource waits for the early start and its ``getOrCreate`` finds
the session up. Over Spark Connect there is no local JVM and nothing is started early.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aerial_assets.settings import DEFAULT_DRIVER_MEMORY, DEFAULT_MASTER, AerialSettings
from aerial_assets.spark import PROJECT_CACHE
from aerial_assets.spark.class_archive import driver_java_options, spark_conf_dir
from aerial_assets.spark.lines import bundled_jar_version
from aerial_assets.spark.synapseml import synapseml_jars

APP_NAME = "aerial_assets"
#: G1 grows the heap towards -Xmx rather than collect, and keeps what it took. Allowing GC up to 1/5 of the time
#: (GCTimeRatio=4) before growing, giving back free heap above 30 % and collecting after 3 s idle: scoring 20,000
#: tiles peaked at 2.73 GiB for the whole process tree instead of 3.69 GiB (Spark JVM 1.57 instead of 2.01 GiB), at
#: the same speed (make bench-county, same machine, back to back).
LOCAL_DRIVER_HEAP_OPTIONS = "-XX:GCTimeRatio=4 -XX:MinHeapFreeRatio=10 -XX:MaxHeapFreeRatio=30 -XX:G1PeriodicGCInterval=3000"
#: The C2 compiler takes a method only after 4 times Java's default number of calls and loops. A run's start-up
#: (SparkContext, Catalyst planning its first queries) runs thousands of methods a few thousand times each, and C2
#: compiled them on the cores the Python workers need: over a whole ``tile_features`` run (4,000 AID images,
#: ``local[2]``, six interleaved pairs) the driver JVM's compiler threads used 6.0-7.5 core-seconds with the defaults
#: and 3.6-4.5 with these, and each run took 0.9-3.2 s less (median 2.0 s). Really hot code (pyspark.ml's training
#: loops) still reaches C2 within moments: training logistic regression, random forest and the MLP on 10,000 images
#: took 55.2, 99.5 and 27.0 s with these against 59.2, 105.5 and 29.0 s without (back to back). C1 alone
#: (``-XX:TieredStopAtLevel=1``) starts faster still, but training under it had not finished after 23 minutes, against
#: 3.5, so it is not used.
LOCAL_DRIVER_JIT_OPTIONS = ("-XX:Tier4InvocationThreshold=20000 -XX:Tier4MinInvocationThreshold=2400 "
                            "-XX:Tier4CompileThreshold=60000 -XX:Tier4BackEdgeThreshold=160000")
LOCAL_DRIVER_JAVA_OPTIONS = f"{LOCAL_DRIVER_HEAP_OPTIONS} {LOCAL_DRIVER_JIT_OPTIONS}"
#: The same C2 thresholds for the executors a cluster launches for this application: each new executor JVM compiles
#: Spark's start-up and task code while its first tasks run, on the cores those tasks need. ``tile_features`` over
#: 3,000 AID images on single-core standalone workers (this machine, 2026-12-04): during the featurization stage the
#: executors' compiler threads used 1.0 core-second with these against 2.2-2.4 with Java's defaults (2 workers), and
#: in two interleaved pairs the asset took 0.4 and 0.9 s less on 1 worker, 0.5 and 1.0 s less on 2 (a first, not
#: interleaved, comparison had 1 worker 0.4 s slower). A cluster's own ``spark.executor.defaultJavaOptions``
#: (spark-defaults.conf) is never replaced (:func:`classic_conf`).
EXECUTOR_JAVA_OPTIONS = LOCAL_DRIVER_JIT_OPTIONS
JARS_DIR = os.path.join(PROJECT_CACHE, "jars")


@dataclass(frozen=True)
class SparkSettings:
    """The environment's Spark settings that decide how a session opens (read here and nowhere else)."""

    master: str = DEFAULT_MASTER
    remote: str = ""
    driver_memory: str = DEFAULT_DRIVER_MEMORY
    jars: str = ""
    verbose: bool = False  # AERIAL_VERBOSE: Spark's own log settings instead of QUIET_LOG_CONFIG

    @classmethod
    def from_settings(cls, settings: AerialSettings) -> SparkSettings:
        return cls(master=settings.spark_master, remote=settings.spark_remote,
                   driver_memory=settings.spark_driver_memory, jars=settings.spark_jars, verbose=settings.verbose)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SparkSettings:
        return cls.from_settings(AerialSettings.from_env(env))


#: The local driver's log4j2 configuration: warnings and errors, without the start-up notices a user cannot act on.
QUIET_LOG_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2-quiet.properties")


def prepare_launch(master: str) -> None:
    """What this process's environment must hold before it launches a driver JVM: the Python that executors run, and
    for a local master ``SPARK_LOCAL_IP`` = 127.0.0.1, so that Spark does not look for another address (and warn that
    the hostname resolves to loopback) before ``spark.driver.bindAddress`` applies. A value the user set is kept."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if is_local_master(master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def is_local_master(master: str) -> bool:
    return (master or "").strip().startswith("local")


def bundled_hadoop_version() -> str | None:
    """The Hadoop client inside the installed pyspark: 3.5.0 for the 4.x line's builds here, 3.3.4 for 3.5.x."""
    return bundled_jar_version("hadoop-client-api")


def local_jars(folder: str = JARS_DIR) -> list[str]:
    """The jars ``make jars`` fetched (pom.xml), once complete (``.complete``): hadoop-azure and what it needs.

    Only when its hadoop-azure is of the Hadoop inside the installed pyspark: a venv of another Spark line
    (``make install PYSPARK=3.5.9``) carries another Hadoop, and a connector of another Hadoop on its class path
    would fail at the first Azure read; without them, only ``AERIAL_SPARK_STORAGE=direct`` is unavailable."""
    if not os.path.exists(os.path.join(folder, ".complete")):
        return []
    jars = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".jar"))
    azure = [re.fullmatch(r"hadoop-azure-(.+)\.jar", os.path.basename(j)) for j in jars]
    versions = {m.group(1) for m in azure if m}
    return jars if versions and versions == {bundled_hadoop_version()} else []


def local_cores(master: str) -> int:
    match = re.match(r"local\[(\d+)", master or "")
    return int(match.group(1)) if match else (os.cpu_count() or 2)


def spark_defaults(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings of the ``spark-defaults.conf`` that spark-submit reads when it launches the driver
    (``SPARK_CONF_DIR``, else the installed Spark's ``conf``): where a cluster's administrators put theirs.

    Spark loads the file as Java properties; the keys are what matters here, and a Spark key holds no separator, so
    a line splits at its first whitespace, ``=`` or ``:`` (comments start with ``#`` or ``!``). Written here because
    the standard library has no Java-properties reader and one lookup does not justify a dependency.
    """
    env = os.environ if env is None else env
    path = os.path.join(spark_conf_dir(env), "spark-defaults.conf")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    settings = {}
    for line in (raw.strip() for raw in lines):
        match = re.match(r"([^\s=:]+)\s*[=:]?\s*(.*)", line)
        if match and line[0] not in "#!":
            settings[match.group(1)] = match.group(2)
    return settings


def classic_conf(master: str, driver_memory: str, jars: str, env: Mapping[str, str] | None = None,
                 verbose: bool = False) -> dict[str, str]:
    """Settings every classic session gets (the resource's ``conf`` and the cluster's spark-defaults.conf can
    override them).

    Local masters bind the driver (and the executors it runs) to loopback: nothing a local run opens
    listens on another interface, and log with :data:`QUIET_LOG_CONFIG` unless ``verbose``. A cluster master
    leaves addresses and logging to the cluster's own configuration.
    """
    local = is_local_master(master)
    conf = {
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.python.worker.reuse": "true",
        # A feature row holds views x D floats (8 x 3072 for a triple combination: 96 KiB). Spark's
        # default batches (4096 rows per Parquet read, 10000 per Arrow batch) would then need
        # hundreds of MB per task and overflow a 2g heap; these keep each batch in tens of MB.
        "spark.sql.parquet.columnarReaderBatchSize": "256",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "1024",
        "spark.ui.showConsoleProgress": "false",
        # The shuffles before featurization and scoring move a few hundred bytes per tile (catalog rows,
        # window offsets) and the tasks after them are CPU-bound: any free slot beats the executor that
        # happens to hold the map output, so do not wait for reduce-side locality.
        "spark.shuffle.reduceLocality.enabled": "false",
    }
    jar_list = [j.strip() for j in jars.split(",") if j.strip()]
    # Without AERIAL_SPARK_JARS (which, when set, is the whole list): the hadoop-azure jars on a local session, and
    # SynapseML's (make jars on the 3.5 line) on local and cluster sessions alike: spark.jars reach a cluster's
    # executors through Spark itself (YARN's distributed cache, a standalone worker's fetch), with no install on the
    # nodes. A cluster's own spark.jars (spark-defaults.conf) are kept before them.
    extra = [] if jar_list else synapseml_jars()
    jar_list = jar_list or (local_jars() if local else [])
    if extra:
        cluster_jars = [] if local else [j for j in spark_defaults(env).get("spark.jars", "").split(",") if j.strip()]
        jar_list = [*cluster_jars, *jar_list, *extra]
    if jar_list:
        conf["spark.jars"] = ",".join(jar_list)
    if local:
        conf.update({
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            # local mode: the driver JVM also runs the executors; a triple backbone combination with
            # 8-view train-time augmentation trains on ~1 GB of doubles, more than 2g leaves room for.
            "spark.driver.memory": driver_memory,
            "spark.sql.shuffle.partitions": str(max(2, 2 * local_cores(master))),
            # The heap and JIT settings above, and the class archive that `make install` built, when there is one
            # (class_archive.py). "default" options: a user's spark.driver.extraJavaOptions come after these and
            # win. Only here: on a cluster, spark.driver.defaultJavaOptions belongs to its administrators
            # (spark-defaults.conf), and a value set here would replace theirs.
            "spark.driver.defaultJavaOptions": " ".join(filter(None, [
                LOCAL_DRIVER_JAVA_OPTIONS, driver_java_options(),
                "" if verbose else f"-Dlog4j2.configurationFile=file:{QUIET_LOG_CONFIG}"])),
        })
    elif "spark.executor.defaultJavaOptions" not in spark_defaults(env):
        # the executors this application gets (local masters run them in the driver JVM, which has these already)
        conf["spark.executor.defaultJavaOptions"] = EXECUTOR_JAVA_OPTIONS
    return conf


def session_conf(settings: SparkSettings, conf: Mapping[str, str] | None = None,
                 spark_config: Mapping[str, str] | None = None) -> dict[str, str]:
    """Everything a classic session is opened with: the master, :func:`classic_conf`, then ``conf`` and
    ``spark_config`` (later ones win)."""
    return {"spark.app.name": APP_NAME, "spark.master": settings.master,
            **classic_conf(settings.master, settings.driver_memory, settings.jars, verbose=settings.verbose),
            **(conf or {}),
            **(spark_config or {})}


_early: threading.Thread | None = None


PLANNED_VIEW = "aerial_assets_first_query_plan"


def _same_batches(batches):
    yield from batches


def plan_first_query(session) -> str:
    """Plan, and never run, a query of the shape the heavy assets start with: a pandas frame made a Spark one
    (Arrow), spread over tasks (a repartition) and handed to ``mapInPandas``.

    The first such query of a driver JVM loads and interprets the code of its steps: 0.5-0.6 s on this machine
    (``createDataFrame`` of 3,000 rows took 0.56 s in a new session, 0.09 s once a query of this shape had been
    planned; measured with the JVM's plan call, which the EXPLAIN here makes too). An early start has
    the JVM idle for seconds while Dagster prepares the run, so it plans this query then. Planning starts no job:
    the executors' task slots stay free. Returns the physical plan, as EXPLAIN gives it.
    """
    import pandas as pd

    frame = session.createDataFrame(pd.DataFrame({"uri": ["plan only"]}), "uri string")
    # EXPLAIN, run as SQL: DataFrame.explain() prints, and redirecting stdout here would swallow what the main
    # thread prints meanwhile; .rdd would run the shuffle's map stage (adaptive execution plans stage by stage)
    frame.repartition(2).mapInPandas(_same_batches, "uri string").createOrReplaceTempView(PLANNED_VIEW)
    try:
        return session.sql(f"EXPLAIN SELECT * FROM {PLANNED_VIEW}").collect()[0][0]
    finally:
        session.catalog.dropTempView(PLANNED_VIEW)


def start_early(env: Mapping[str, str], argv: Sequence[str] = ()) -> threading.Thread | None:
    """Start the classic session of ``env``'s settings in a daemon thread; return it (None when nothing starts).

    Nothing starts over Spark Connect (``SPARK_REMOTE``) or for ``--help``. A failure here is ignored: the
    resource opens the session again when a step needs it and reports the error there, in its own words.
    """
    global _early
    settings = SparkSettings.from_env(env)
    if settings.remote or any(a in ("-h", "--help") for a in argv) or _early is not None:
        return None
    conf = session_conf(settings)

    def open_session() -> None:
        try:
            from pyspark.sql import SparkSession

            prepare_launch(settings.master)
            plan_first_query(SparkSession.builder.config(map=conf).getOrCreate())
        except Exception:  # noqa: BLE001 - the resource opens the session again and reports what went wrong
            pass

    _early = threading.Thread(target=open_session, name="spark-early-start", daemon=True)
    _early.start()
    return _early


def wait_for_early_start() -> None:
    """Let an early start finish before a session is opened the ordinary way (one JVM, never two launches)."""
    if _early is not None:
        _early.join()


def stop_classic_session() -> None:
    """Stop this process's classic Spark session, if one is open, before the process ends.

    On YARN the application then unregisters from the ResourceManager with its final status. Left to the JVM's
    shutdown, a client-mode application master can be stopped before it reports one, and YARN starts a second
    attempt of an application whose driver is already gone (seen in ``test_yarn.py``). Over Spark Connect there is
    no local context and nothing to stop.
    """
    wait_for_early_start()
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is not None:
        context.stop()
