"""Killed and concurrent runs: what ``make run``, ``make ui`` and the Dagster daemon do about them.

Three mechanisms, because a ``kill -9`` gives a process no chance to clean up after itself:

* **Run lock.** ``make run`` holds an exclusive ``fcntl.flock`` on ``<data root>/.aerial-run.lock`` for its
  whole life (for an Azure data root: a lock file named after the URI in the local Dagster home). A second
  ``make run`` on the same data root is refused in one line naming the holder. The OS releases the lock when
  its process dies, however it dies, so a killed run never leaves a stale lock behind.
* **Dead runs are failed.** Every run ``make run`` starts is tagged with its process (``aerial/pid``,
  ``aerial/host``, ``aerial/pid_start``); a run launched from the UI has the run worker's pid in Dagster's own
  "Started process for run (pid: N)" event. A run still recorded as in progress whose process is gone is
  reported failed, at the start of ``make run`` and of ``make ui`` (:func:`prepare`), and, while the UI is up,
  by the daemon's run monitoring, through :class:`AerialRunLauncher` (dagster.yaml): Dagster's own
  ``DefaultRunLauncher`` cannot check a run worker's health, so run monitoring alone would never fail a dead
  run, and the queue (``max_concurrent_runs: 1``) would wait for it forever.
* **Temporaries of dead processes are removed** (:func:`aerial_assets.storage.core.sweep_stale_temporaries`),
  at the same two starts.

Creating a fresh Dagster home's SQLite databases is serialised by a second lock (:func:`open_instance`), so
two processes starting together on a new root (``make run`` and ``make ui``, say) never race on it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from typing import IO

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.events import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, LaunchRunContext, WorkerStatus
from dagster._core.remote_origin import (
    GrpcServerCodeLocationOrigin,
    InProcessCodeLocationOrigin,
    ManagedGrpcPythonEnvCodeLocationOrigin,
)

from aerial_assets.defs import settings
from aerial_assets.errors import AerialError
from aerial_assets.storage.core import (
    is_local,
    local_path,
    process_alive,
    process_start_ticks,
    sweep_stale_temporaries,
)

TAG_PID = "aerial/pid"
TAG_HOST = "aerial/host"
TAG_PID_START = "aerial/pid_start"
RUN_LOCK = ".aerial-run.lock"
INSTANCE_LOCK = ".aerial-instance.lock"
INSTANCE_LOCK_TIMEOUT_S = 120.0
# Runs that may still have a process: QUEUED ones have none yet (the queue owns them), finished ones none any more.
WATCHED_STATUSES = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                    DagsterRunStatus.CANCELING]
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "")


class RunRefused(AerialError):
    """Another ``make run`` (or a UI run) is working on the same data root: running now would interleave
    writes of the same outputs, or read a model the other run is replacing."""


# --- the run lock -------------------------------------------------------------------------------------------


def run_lock_path(data_root: str, home: str) -> str:
    """The lock file of one data root: inside it when it is local, else in the local Dagster home."""
    if is_local(data_root):
        return os.path.join(local_path(data_root), RUN_LOCK)
    digest = hashlib.sha256(data_root.rstrip("/").encode()).hexdigest()[:12]
    return os.path.join(home, f".aerial-run-{digest}.lock")


def _holder(handle: IO[str]) -> str:
    """Who holds a run lock, from what it wrote into the file (it may not have written yet)."""
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except ValueError:
        info = {}
    pid = info.get("pid")
    if not isinstance(pid, int) or (info.get("host") == socket.gethostname() and not process_alive(pid)):
        return "another make run"  # it has not written its name yet: what is there is its predecessor's
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"another make run (pid {info['pid']} on {info.get('host', '?')}, since {since})"


class RunLock:
    """An exclusive, non-blocking ``flock`` on one data root's lock file, held until :meth:`release` or the
    process ends (the OS drops it then, also after ``kill -9``: there is never a stale lock to remove)."""

    def __init__(self, path: str, data_root: str):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._handle: IO[str] | None = open(path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(self._handle)
            self._handle.close()
            self._handle = None
            raise RunRefused(f"{holder} is using the data root {data_root}: wait for it to finish or stop it "
                             f"(one run per data root; lock file {path})") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
        self._handle.flush()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the only descriptor drops the flock
            self._handle = None


def lock_is_held(path: str) -> str | None:
    """The holder of the run lock at ``path`` when some process holds it, else None (nothing is created)."""
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(handle)
    return None


# --- the instance -------------------------------------------------------------------------------------------

PROJECT_YAML = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "dagster.yaml")


#: Module paths that earlier versions wrote into a home's dagster.yaml, and where that code lives now.
MOVED_MODULES = {"aerial_assets.run_guard": "aerial_assets.defs.run_guard",
                 "aerial_assets.compute_logs": "aerial_assets.defs.compute_logs"}


def upgrade_instance_yaml(target: str) -> None:
    """A home made by an earlier version names the run launcher by its old module path, which no longer
    imports; point it at the module's new place (same temporary-name-and-rename as a fresh copy)."""
    with open(target) as handle:
        text = handle.read()
    upgraded = text
    for old, new in MOVED_MODULES.items():
        upgraded = re.sub(rf"\b{re.escape(old)}\b", new, upgraded)
    if upgraded == text:
        return
    part = f"{target}.part-{os.getpid()}"
    with open(part, "w") as handle:
        handle.write(upgraded)
    os.replace(part, target)


def install_instance_yaml(home: str) -> None:
    """Give ``home`` the project's dagster.yaml unless it has one. Written under a temporary name and renamed,
    so a process starting at the same moment (``make ui`` and ``make run``) never reads half of it."""
    os.makedirs(home, exist_ok=True)
    target = os.path.join(home, "dagster.yaml")
    if os.path.exists(target):
        upgrade_instance_yaml(target)
        return
    if not os.path.exists(PROJECT_YAML):
        return
    part = f"{target}.part-{os.getpid()}"
    with open(PROJECT_YAML, "rb") as source, open(part, "wb") as copy:
        copy.write(source.read())
    os.replace(part, target)



@contextlib.contextmanager
def _instance_lock(home: str) -> Iterator[None]:
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, INSTANCE_LOCK), "a") as handle:
        deadline = time.monotonic() + INSTANCE_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunRefused(f"the Dagster home {home} has been locked for {INSTANCE_LOCK_TIMEOUT_S:.0f} s "
                                     f"by another process creating it ({INSTANCE_LOCK})") from None
                time.sleep(0.2)
        yield


def open_instance(home: str) -> DagsterInstance:
    """The Dagster instance of ``home``, whose storage (SQLite, created on first use) is created by one
    process at a time: two processes creating it at once fail with ``table ... already exists``."""
    with _instance_lock(home):
        instance = DagsterInstance.from_config(home)
        instance.get_runs_count()  # touch the run, event and schedule storages while holding the lock
        instance.all_instigator_state()
    return instance


# --- which runs are dead ------------------------------------------------------------------------------------


def run_tags() -> dict[str, str]:
    """Tags that let a later process tell whether the run this process starts is still running."""
    pid = os.getpid()
    tags = {TAG_PID: str(pid), TAG_HOST: socket.gethostname()}
    start = process_start_ticks(pid)
    if start is not None:
        tags[TAG_PID_START] = str(start)
    return tags


def _origin_is_local(run: DagsterRun) -> bool:
    """Whether the run's worker was started on this host: by ``dagster dev``'s own code server, not a remote one."""
    origin = run.remote_job_origin
    if origin is None:
        return False
    location = origin.repository_origin.code_location_origin
    if isinstance(location, ManagedGrpcPythonEnvCodeLocationOrigin | InProcessCodeLocationOrigin):
        return True
    return isinstance(location, GrpcServerCodeLocationOrigin) and location.host in (
        *LOOPBACK_HOSTS, socket.gethostname())


def _worker_pid(instance: DagsterInstance, run: DagsterRun) -> int | None:
    """The run worker's pid from Dagster's "Started process for run (pid: N)" engine event."""
    for entry in reversed(instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)):
        event = entry.dagster_event
        data = event.engine_event_data if event else None
        pid = (data.metadata or {}).get("pid") if data else None
        if pid is not None and str(getattr(pid, "value", pid)).isdigit():
            return int(getattr(pid, "value", pid))
    return None


def worker_state(instance: DagsterInstance, run: DagsterRun) -> tuple[str, str]:
    """``("alive" | "dead" | "unknown", what)``: whether the process that runs ``run`` is still there.

    "unknown" (another host, a remote code server, a run without a recorded process) is never treated as
    dead: only a run whose process is known to be gone is failed.
    """
    tags: Mapping[str, str] = run.tags
    if tags.get(TAG_PID, "").isdigit():
        pid, host = int(tags[TAG_PID]), tags.get(TAG_HOST, "")
        what = f"make run process {pid} on {host or '?'}"
        if host != socket.gethostname():
            return "unknown", what
        recorded = tags.get(TAG_PID_START, "")
        current = process_start_ticks(pid)
        if not process_alive(pid) or (recorded.isdigit() and current is not None and current != int(recorded)):
            return "dead", what
        return "alive", what
    if _origin_is_local(run):
        pid = _worker_pid(instance, run)
        if pid is not None:
            return ("alive" if process_alive(pid) else "dead"), f"run worker process {pid}"
    return "unknown", "a process this host cannot check"


def fail_dead_runs(instance: DagsterInstance, by: str) -> list[str]:
    """Report every run whose process is gone as failed (canceled when it was being canceled); return their ids.

    ``by`` names who noticed, for the event log. A queued run from the UI can then start: the queue counts
    such runs as in progress until they are marked.
    """
    failed = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=WATCHED_STATUSES)):
        run = record.dagster_run
        state, what = worker_state(instance, run)
        if state != "dead":
            continue
        run = instance.get_run_by_id(run.run_id)  # it may have ended, as its process exited, since it was listed
        if run is None or run.status not in WATCHED_STATUSES:
            continue
        message = f"The {what} of this run is gone (killed or crashed); {by} marked the run as ended."
        instance.report_engine_event(message, run)
        if run.status == DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message)
        else:
            instance.report_run_failed(run, message)
        failed.append(run.run_id)
    return failed


def live_ui_runs(instance: DagsterInstance) -> list[tuple[str, str]]:
    """(run id, process) of every in-progress run launched from the UI whose worker is known to be running.
    (A live ``make run`` on the same data root holds its lock; one on another data root may share the home.)"""
    out = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=WATCHED_STATUSES)):
        if TAG_PID in record.dagster_run.tags:
            continue
        state, what = worker_state(instance, record.dagster_run)
        if state == "alive":
            out.append((record.dagster_run.run_id, what))
    return out


def prepare(home: str, data_root: str, by: str) -> tuple[DagsterInstance, list[str], list[str]]:
    """What every start does: open (create) the instance, fail its dead runs, sweep dead temporaries.

    Safe while other runs are alive: only dead processes' runs and temporaries are touched.
    Returns the instance, the failed run ids and the removed temporaries.
    """
    instance = open_instance(home)
    failed = fail_dead_runs(instance, by)
    swept = sweep_stale_temporaries(data_root) if is_local(data_root) else []
    return instance, failed, swept


class RunGuard:
    """What ``make run`` holds for its whole life: the data root's lock and the prepared instance."""

    def __init__(self, home: str, data_root: str):
        self.lock = RunLock(run_lock_path(data_root, home), data_root)
        try:
            self.instance, failed, swept = prepare(home, data_root, "make run")
            _say(failed, swept)
            busy = live_ui_runs(self.instance)
            if busy:
                run_id, what = busy[0]
                raise RunRefused(f"run {run_id} ({what}, launched from the Dagster UI) is in progress on the Dagster "
                                 f"home {home}: wait for it or terminate it in the UI (one run at a time)")
        except BaseException:
            self.lock.release()
            raise

    def release(self) -> None:
        self.lock.release()


def _say(failed: list[str], swept: list[str]) -> None:
    if failed:
        print(f"marked {len(failed)} run(s) whose process is gone as failed: {', '.join(failed)}", flush=True)
    if swept:
        print(f"removed {len(swept)} temporary folder(s) left by dead processes", flush=True)


# --- the daemon's view: run monitoring ----------------------------------------------------------------------


class AerialRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher, plus the two things ``make ui`` needs on a shared data root.

    * ``check_run_worker_health``: the daemon's run monitoring (dagster.yaml ``run_monitoring``) asks it about
      every started run and fails those whose process is gone: UI runs whose worker was killed, and
      ``make run`` runs killed while the UI is up. The default launcher cannot answer, so without this a dead
      run stays "in progress" and the queue waits for it forever.
    * ``launch_run`` refuses (fails the run with the reason) while a ``make run`` holds the data root's lock.
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        state, what = worker_state(self._instance, run)
        if state == "dead":
            return CheckRunHealthResult(WorkerStatus.FAILED, f"the {what} is gone (killed or crashed)")
        # "unknown" must not fail a run that may be running elsewhere: monitoring only acts on known deaths.
        return CheckRunHealthResult(WorkerStatus.RUNNING, what)

    def launch_run(self, context: LaunchRunContext) -> None:
        data_root = settings.data_root(os.environ)
        holder = lock_is_held(run_lock_path(data_root, self._instance.root_directory))
        if holder:
            self._instance.report_run_failed(
                context.dagster_run, f"Not launched: {holder} is using the data root {data_root}; launch it again "
                                     "when that run has finished (one run per data root).")
            return
        super().launch_run(context)


# --- make ui ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``make ui``'s first step: create the instance, fail dead runs, sweep dead temporaries, then say so."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--home", default=os.environ.get("DAGSTER_HOME", ""))
    parser.add_argument("--data-root", default=settings.data_root(os.environ))
    args = parser.parse_args(argv)
    if not args.home:
        print("run_guard: set DAGSTER_HOME or --home", file=sys.stderr)
        return 2
    try:
        install_instance_yaml(args.home)
        _, failed, swept = prepare(os.path.abspath(args.home), args.data_root, "make ui")
    except AerialError as exc:
        print(f"make ui: {exc}", file=sys.stderr)
        return 2
    _say(failed, swept)
    yaml_path = os.path.join(args.home, "dagster.yaml")
    if os.path.exists(yaml_path) and "AerialRunLauncher" not in open(yaml_path).read():
        print(f"note: {yaml_path} predates run monitoring: runs killed while the UI is up stay in progress until "
              "the next make ui; copy the project's dagster.yaml there to enable it", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
