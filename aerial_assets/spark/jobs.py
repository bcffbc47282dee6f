"""How heavy work is shaped on Spark: how many tasks, and how a long job reports its progress. No Dagster import.

The width of a job comes from the data and from the cluster, never from a constant: a few hundred tiles per
task (``tiles_per_task``), and never fewer tasks than the cluster has task slots, rounded up to whole waves
of slots so that no slot idles through a short last wave. ``local[2]`` with 10,000 tiles gets a few dozen
tasks; a 40-node cluster with a county of 100,000 tiles gets hundreds, one wave after another.

Progress comes from Spark itself (the work is one job, not a loop of small jobs that the driver counts):
in a classic session a daemon thread reads the job group's stages from ``SparkContext.statusTracker()``;
over Spark Connect the session's ``registerProgressHandler`` (4.0+) receives the server's stage progress. Both
report completed tasks of the job's widest stage, turned into tiles (tasks hold equal shares of the rows
after a round-robin repartition), so the estimate is honest and says it is one.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aerial_assets.spark.lines import has_connect_progress

DEFAULT_TILES_PER_TASK = 256

def is_connect(session) -> bool:
    """Whether ``session`` is a Spark Connect session (no SparkContext on the client)."""
    return type(session).__module__.startswith("pyspark.sql.connect")


def task_slots(session, setting: int = 0) -> int:
    """How many tasks the cluster runs at once: ``setting`` (``AERIAL_SPARK_PARALLELISM``) when positive; else
    the session's default parallelism (classic sessions: total executor cores, at least 2 on a cluster); over
    Spark Connect, where the client cannot see the cluster, ``spark.default.parallelism`` if the server sets it,
    else 2 (docs: set ``AERIAL_SPARK_PARALLELISM`` to the cluster's cores)."""
    if setting > 0:
        return setting
    if not is_connect(session):
        return max(1, int(session.sparkContext.defaultParallelism))
    try:
        value = session.conf.get("spark.default.parallelism", None)
    except Exception:  # noqa: BLE001 - a server may refuse to expose a conf; the fallback below is documented
        value = None
    return max(1, int(value)) if value else 2


def executor_cores(session) -> int:
    """The cores of one executor: ``spark.executor.cores`` when set (YARN's default is 1), else a local master's
    ``local[N]`` (its one executor is the driver), else 1."""
    if is_connect(session):
        return 1
    conf = session.sparkContext.getConf()
    value = conf.get("spark.executor.cores", None)
    if value and str(value).isdigit():
        return max(1, int(value))
    master = conf.get("spark.master", "") or ""
    if master.startswith("local"):
        return max(1, int(session.sparkContext.defaultParallelism))
    return 1


def task_count(n_rows: int, slots: int, rows_per_task: int = DEFAULT_TILES_PER_TASK) -> int:
    """Tasks for ``n_rows`` rows: about ``rows_per_task`` each, at least one per slot, in whole waves of slots."""
    slots = max(1, slots)
    wanted = max(1, math.ceil(max(0, n_rows) / max(1, rows_per_task)))
    return slots * math.ceil(wanted / slots)


@dataclass(frozen=True)
class StageProgress:
    """Tasks of one stage: how many, how many completed."""

    stage_id: int
    num_tasks: int
    num_completed_tasks: int


def tiles_done(stages: list[StageProgress], total_tiles: int) -> tuple[int, int, int]:
    """(estimated tiles done, completed tasks, tasks) from the widest stage of a job: the stage that holds
    the rows; its tasks carry equal shares of them."""
    if not stages:
        return 0, 0, 0
    widest = max(stages, key=lambda s: (s.num_tasks, s.stage_id))
    if widest.num_tasks <= 0:
        return 0, 0, 0
    done = min(widest.num_completed_tasks, widest.num_tasks)
    return round(total_tiles * done / widest.num_tasks), done, widest.num_tasks


class JobProgress:
    """Reports a Spark job's progress through ``emit`` as it runs, from Spark's own counters.

    ``with JobProgress(session, total, "featurizing", log.info, tasks=n_tasks):`` around the one action (a write)
    that runs the job. Reports are throttled to one per ``every_s`` seconds and one at the end.
    """

    def __init__(self, session, total_tiles: int, what: str, emit: Callable[[str], None], every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, tasks: int = 0):
        self.session, self.total, self.what, self.emit = session, total_tiles, what, emit
        self.tasks = tasks  # the job's expected width (task_count), for stages Spark has not submitted yet
        self.every_s, self.clock = every_s, clock
        self.group = f"aerial-{uuid.uuid4().hex[:12]}"
        self.started = clock()
        self._last_report = -1.0
        self._last_done = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler = None
        self.stages: dict[int, StageProgress] = {}
        self.job_ids: set[int] = set()  # the Spark jobs the action ran (classic sessions; empty over Connect)

    # --- reporting --------------------------------------------------------------------------------------------

    def message(self) -> str:
        tiles, done, tasks = tiles_done(list(self.stages.values()), self.total)
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = tiles / elapsed
        left = (self.total - tiles) / rate if rate > 0 else float("nan")
        eta = f"{left:.0f} s left" if left == left else "time left unknown"
        pct = 100.0 * tiles / self.total if self.total else 100.0
        return (f"{self.what}: ~{tiles}/{self.total} tiles ({pct:.0f} %; {done}/{tasks} Spark tasks done), "
                f"{rate:.1f} tiles/s, {eta}")

    def _report(self, force: bool = False) -> None:
        _, done, tasks = tiles_done(list(self.stages.values()), self.total)
        now = self.clock()
        if tasks == 0 or (not force and (done == self._last_done or now - self._last_report < self.every_s)):
            return
        self._last_done, self._last_report = done, now
        self.emit(self.message())

    # --- classic sessions: the status tracker -----------------------------------------------------------------

    def _poll(self) -> None:
        tracker = self.session.sparkContext.statusTracker()
        for job_id in tracker.getJobIdsForGroup(self.group):
            self.job_ids.add(job_id)
            job = tracker.getJobInfo(job_id)
            for stage_id in (job.stageIds if job else []):
                info = tracker.getStageInfo(stage_id)
                if info is not None:
                    self.stages[stage_id] = StageProgress(stage_id, info.numTasks, info.numCompletedTasks)
                elif stage_id not in self.stages:
                    # not submitted yet: the wide stage after a small shuffle-map stage; it must not let the
                    # finished small stage pass for the whole job (its width is the expected task count)
                    self.stages[stage_id] = StageProgress(stage_id, max(1, self.tasks), 0)

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.every_s)):
            with contextlib.suppress(Exception):  # a tracker read racing the job's end must not kill the thread
                self._poll()
                self._report()

    # --- Spark Connect: the session's progress handler --------------------------------------------------------

    def _on_progress(self, stages, inflight_tasks, operation_id, done) -> None:
        for stage in stages or []:
            self.stages[stage.stage_id] = StageProgress(stage.stage_id, stage.num_tasks, stage.num_completed_tasks)
        self._report(force=bool(done))

    def __enter__(self) -> JobProgress:
        if is_connect(self.session):
            if has_connect_progress(self.session):
                self._handler = self._on_progress
                self.session.registerProgressHandler(self._handler)
            else:  # a 3.5 Connect client gets no stage progress from the server: the job's end is still reported
                self.emit(f"{self.what}: {self.total} tiles (this Spark Connect client reports no progress before "
                          "the job ends)")
        else:
            self.session.sparkContext.setJobGroup(self.group, self.what, interruptOnCancel=True)
            self._thread = threading.Thread(target=self._watch, name=f"progress-{self.group}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._handler is not None:
            self.session.removeProgressHandler(self._handler)
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            with contextlib.suppress(Exception):
                self._poll()
            self.session.sparkContext.setLocalProperty("spark.jobGroup.id", None)
            self.session.sparkContext.setLocalProperty("spark.job.description", None)
        if exc[0] is None:
            if not self.stages:  # too short for Spark to report a stage (Connect reports every few seconds)
                elapsed = max(self.clock() - self.started, 1e-9)
                self.emit(f"{self.what}: {self.total}/{self.total} tiles (100 %; the job ended before Spark "
                          f"reported its stages), {self.total / elapsed:.1f} tiles/s")
                return
            self._report(force=True)
