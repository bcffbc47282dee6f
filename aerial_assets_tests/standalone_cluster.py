"""A real Spark standalone cluster on this machine, for tests and benchmarks: a master and N workers started from
the installed pyspark (``bin/spark-class ...deploy.master.Master`` / ``...deploy.worker.Worker``), each a separate
JVM on 127.0.0.1 with free ports, stopped by process id. Plus a reader of Spark event logs, so that a test can
see where tasks ran from Spark's own record rather than from the project's counters.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

SPARK_HOME = os.path.dirname(pyspark.__file__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spark_env(home: str = SPARK_HOME) -> dict[str, str]:
    env = {**os.environ, "SPARK_HOME": home, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}
    env.pop("SPARK_CONF_DIR", None)
    return env


@dataclass
class StandaloneCluster:
    """``with StandaloneCluster(folder, workers=3) as cluster:`` ... ``cluster.url`` is the master URL."""

    folder: Path
    workers: int = 2
    cores: int = 1
    memory: str = "2g"
    #: Pin worker ``i`` and everything it starts (its executor JVM, that executor's Python workers) to CPU
    #: ``i mod cpus``, as if each worker were a machine of its own: unpinned, a 1-core worker's JVM threads (JIT, GC)
    #: run on the machine's other cores, so one "single-core" worker uses more than one core. The master and the
    #: driver are not pinned.
    pin: bool = False
    master_port: int = 0
    ui_port: int = 0
    #: the Spark installation the daemons run (another venv's pyspark: a cluster of another Spark line)
    spark_home: str = SPARK_HOME
    procs: list[subprocess.Popen] = field(default_factory=list)
    worker_procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def _spawn(self, name: str, args: list[str], cpu: int | None = None) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        # the affinity is inherited by every process the worker starts (executor JVMs, their Python daemons)
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        return subprocess.Popen([os.path.join(self.spark_home, "bin", "spark-class"), *args], cwd=self.folder,
                                env=_spark_env(self.spark_home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=pin)

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as response:
            return json.load(response)

    def alive_workers(self) -> int:
        try:
            return sum(1 for w in self.state().get("workers", []) if w.get("state") == "ALIVE")
        except OSError:
            return -1

    def __enter__(self) -> StandaloneCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.master_port, self.ui_port = free_port(), free_port()
        self.procs.append(self._spawn("master", [
            "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.master_port),
            "--webui-port", str(self.ui_port)]))
        self._wait(lambda: self.alive_workers() >= 0, "the master")
        for i in range(self.workers):
            self.add_worker(i)
        self._wait(lambda: self.alive_workers() >= self.workers, f"{self.workers} workers")
        return self

    def add_worker(self, i: int) -> None:
        work = self.folder / f"worker{i}"
        work.mkdir(exist_ok=True)
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[i % len(cpus)] if self.pin else None
        proc = self._spawn(f"worker{i}", [
            "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(self.cores),
            "--memory", self.memory, "--webui-port", str(free_port()), "--work-dir", str(work), self.url],
            cpu=cpu)
        if cpu is not None and os.sched_getaffinity(proc.pid) != {cpu}:
            raise RuntimeError(f"worker {i} is not pinned to CPU {cpu}")
        self.procs.append(proc)
        self.worker_procs.append(proc)

    def stop_workers(self, keep: int) -> None:
        """Stop every worker but the first ``keep`` (by process id) and wait until the master sees it."""
        for proc in self.worker_procs[keep:]:
            stop_group(proc)
            self.procs.remove(proc)
        self.worker_procs = self.worker_procs[:keep]
        self._wait(lambda: self.alive_workers() == keep, f"{keep} workers left", timeout=120)

    def _wait(self, ready, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a cluster process exited early; see the logs in {self.folder}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout} s for {what}; see the logs in {self.folder}")

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            stop_group(proc)


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and all of its children: SIGTERM to its group, then
    SIGKILL if it has not exited within ``timeout`` seconds. Shared by the tests' clusters, servers and UIs."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def spark_conf_dir(folder: Path, conf: dict[str, str]) -> Path:
    """A ``SPARK_CONF_DIR`` with ``spark-defaults.conf``: how a cluster user gives Spark its settings."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
    return folder


@dataclass(frozen=True)
class HeavyStage:
    """One stage of a job, from the event log: its tasks and the executors that ran them."""

    job_description: str
    stage_id: int
    num_tasks: int
    executors: frozenset[str]


def event_log(folder: Path) -> list[dict]:
    """Every event of the application logs in ``folder`` (JSON lines): Spark 4 rolls them into ``eventlog_v2_*/``
    folders of ``events_<n>_*`` files beside an empty ``appstatus_*`` marker; Spark 3.5 writes one file per
    application, named after its id (``app-...``, ``local-...``, YARN's ``application_...``; ``.inprogress`` while it
    runs). Write them with ``spark.eventLog.compress false``."""
    events = []
    names = ("events_", "app-", "local-", "application_")
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.startswith(names)):
        events += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return events


def executors(events: list[dict]) -> set[str]:
    return {e["Executor ID"] for e in events if e.get("Event") == "SparkListenerExecutorAdded"}


def heavy_stages(events: list[dict], prefix: str) -> list[HeavyStage]:
    """For each job whose description starts with ``prefix``, its widest stage and the executors its
    successful tasks ran on."""
    stages_of, description, width = {}, {}, {}
    for e in events:
        if e.get("Event") == "SparkListenerJobStart":
            desc = (e.get("Properties") or {}).get("spark.job.description") or ""
            if desc.startswith(prefix):
                stages_of[e["Job ID"]] = [s["Stage ID"] for s in e["Stage Infos"]]
                description[e["Job ID"]] = desc
                for s in e["Stage Infos"]:
                    width[s["Stage ID"]] = s["Number of Tasks"]
    ran = defaultdict(set)
    for e in events:
        if e.get("Event") == "SparkListenerTaskEnd" and (e.get("Task End Reason") or {}).get("Reason") == "Success":
            ran[e["Stage ID"]].add(e["Task Info"]["Executor ID"])
    out = []
    for job, stages in stages_of.items():
        # a skipped stage (its shuffle output reused) has no task; the widest stage that ran holds the rows
        ran_stages = [s for s in stages if ran.get(s)] or stages
        stage = max(ran_stages, key=lambda s: (width[s], s))
        out.append(HeavyStage(description[job], stage, width[stage], frozenset(ran.get(stage, set()))))
    return out


def assert_every_heavy_stage_ran_on_every_executor(events: list[dict], prefixes: tuple[str, ...], count: int) -> set[str]:
    """``count`` executors were added, and the widest stage of every job described by one of ``prefixes`` (one at
    least each) ran successful tasks on all of them; returns the executor ids."""
    ran_on = executors(events)
    assert len(ran_on) == count, ran_on
    for prefix in prefixes:
        stages = heavy_stages(events, prefix)
        assert stages, f"no job described {prefix!r} in the event log"
        for stage in stages:
            assert stage.executors == ran_on, (prefix, stage)
    return ran_on
