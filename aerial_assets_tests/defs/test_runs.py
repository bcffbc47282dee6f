"""Killed runs, concurrent runs and unreachable services, with real processes (issue 13, cases 4, 5 and 9).

``make run`` is ``python -m aerial_assets.defs.run`` started here in its own process group on tiny seeded data
(one backbone, one algorithm); ``make ui`` is ``python -m aerial_assets.defs.run_guard`` followed by ``dagster dev``.
Processes are killed with SIGKILL by process id, as a user's ``kill -9`` would, and nothing is mocked.
The project's modules are imported inside the tests, so that each test states its own failure on a version
without these guarantees.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from aerial_assets_tests.standalone_cluster import stop_group

REPO = Path(__file__).resolve().parents[2]
LOCATION, REPOSITORY = "aerial_assets", "__repository__"
TEMPORARY = re.compile(r"\.(tmp|old)-")


def _env(root: Path, tiles: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AERIAL_", "AZURE_STORAGE_"))}
    env.pop("DAGSTER_HOME", None)
    return {**env, "AERIAL_DATA_ROOT": str(root), "AERIAL_TRAINING_TILES": str(tiles),
            "AERIAL_BACKBONES": "mobilenet_v2", "AERIAL_ALGORITHMS": "logistic_regression", "AERIAL_PRESET": "fast",
            "PYSPARK_PYTHON": sys.executable, **extra}


def _make_run(env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """``make run`` (stopping after the champion), in its own process group so that its Spark JVM can be
    stopped with it."""
    return subprocess.Popen([sys.executable, "-m", "aerial_assets.defs.run", "--skip-counties"], cwd=cwd, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    """``kill -9`` of the process, then of what is left of its group (Spark's JVM), by id."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_for(what: str, check: Callable[[], object], timeout: float, alive: subprocess.Popen | None = None,
              log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"process exited ({alive.returncode}) before {what}: "
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.2)
    raise TimeoutError(f"no {what} after {timeout:.0f} s")


def _temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if TEMPORARY.search(p.name)) if root.exists() else []


def _runs(home: Path, **filters) -> list:
    instance = DagsterInstance.from_config(str(home))
    try:
        return list(instance.get_runs(filters=RunsFilter(**filters)))
    finally:
        instance.dispose()


def _failure_messages(home: Path, run_id: str) -> list[str]:
    instance = DagsterInstance.from_config(str(home))
    try:
        return [e.dagster_event.message or "" for e in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)]
    finally:
        instance.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- case 4: a killed run ---------------------------------------------------------------------------------


def test_temporaries_carry_their_process_and_only_dead_ones_are_swept(tmp_path):
    from aerial_assets.storage.core import LocalStorage, host_tag, sweep_stale_temporaries

    store = LocalStorage()
    with store.atomic_dir(str(tmp_path / "live" / "out")) as live:
        assert Path(live).name.startswith(f"out.tmp-{os.getpid()}-{host_tag()}-")
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    dead, here = exited.pid, host_tag()
    folders = {
        "dead_tmp": tmp_path / "a" / f"out.tmp-{dead}-{here}-0000beef",
        "live_tmp": tmp_path / "a" / f"out.tmp-{os.getpid()}-{here}-0000cafe",
        "other_host": tmp_path / "b" / f"out.tmp-{dead}-{'0' * 8 if here != '0' * 8 else '1' * 8}-0000f00d",
        "unowned": tmp_path / "b" / "out.tmp-0000abcd",  # an older version's name: whose it is cannot be told
        "dead_old_committed": tmp_path / "c" / f"done.old-{dead}-{here}-00000001",
        "dead_old_cut": tmp_path / "d" / "deep" / f"cut.old-{dead}-{here}-00000002",
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "part-0").write_text(folder.name)
    (tmp_path / "c" / "done").mkdir()  # committed: the old output is only waiting to be deleted

    removed = sweep_stale_temporaries(str(tmp_path))

    assert sorted(removed) == sorted(str(folders[k]) for k in ("dead_tmp", "dead_old_committed"))
    for key in ("live_tmp", "other_host", "unowned"):
        assert folders[key].exists(), key
    # a commit cut between its two renames: the previous output is put back, not deleted
    assert not folders["dead_old_cut"].exists()
    assert (tmp_path / "d" / "deep" / "cut" / "part-0").read_text() == folders["dead_old_cut"].name


def test_a_killed_make_run_is_failed_and_swept_by_the_next_start(tiny_tiles, tmp_path):
    from aerial_assets.storage.core import LocalStorage

    root, home = tmp_path / "data", tmp_path / "data" / "dagster_home"
    env = _env(root, tiny_tiles)
    log = tmp_path / "first.log"
    first = _make_run(env, log, tmp_path)
    in_flight = {DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}
    try:
        # freeze the make run (SIGSTOP to its group: the process and its Spark JVM) while it holds a temporary in a
        # started run, so that the state the guard sees cannot move on under it (the steps of tiny data are short)
        for _ in range(20):
            _wait_for("a temporary of a running step", lambda: _temporaries(root), 600, first, log)
            os.killpg(first.pid, signal.SIGSTOP)
            if _temporaries(root) and in_flight & {r.status for r in _runs(home)}:
                break
            os.killpg(first.pid, signal.SIGCONT)
            time.sleep(0.1)
        else:
            raise AssertionError("the make run never held a temporary in a started run when frozen")
        frozen = _temporaries(root)
        # make ui's first step while the run is alive (and while this process, alive too, writes an output):
        # it must leave the live runs and their temporaries alone
        with LocalStorage().atomic_dir(str(root / "tile_features" / "written_by_the_test")) as held:
            ui = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run_guard"], cwd=tmp_path, timeout=300,
                                env={**env, "DAGSTER_HOME": str(home)}, capture_output=True, text=True)
            assert ui.returncode == 0, ui.stdout + ui.stderr
            assert Path(held).is_dir()
        statuses = [r.status for r in _runs(home)]
        assert first.poll() is None and DagsterRunStatus.FAILURE not in statuses, statuses
        assert in_flight & set(statuses), statuses
        assert _temporaries(root) == frozen, "the guard swept a live run's temporary"
    finally:
        _kill(first)  # SIGKILL ends a stopped process too: the started run and its temporary are left behind
    in_progress = _runs(home, statuses=[DagsterRunStatus.STARTED])
    assert len(in_progress) == 1 and _temporaries(root), "kill -9 leaves a started run and its temporary"

    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", "--skip-counties"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "marked 1 run(s) whose process is gone as failed" in second.stdout
    assert "temporary folder(s) left by dead processes" in second.stdout
    dead = _runs(home, run_ids=[in_progress[0].run_id])[0]
    assert dead.status == DagsterRunStatus.FAILURE
    assert any(f"make run process {first.pid}" in m for m in _failure_messages(home, dead.run_id))
    assert not _runs(home, statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])
    assert not _temporaries(root)
    assert (root / "model_leaderboard" / "leaderboard.csv").exists()
    print(f"next make run after the kill: {time.monotonic() - started:.0f} s")


# --- case 4, with the UI up: the daemon's run monitoring ---------------------------------------------------


class DagsterDev:
    """``dagster dev`` (webserver + daemon) in its own process group, stopped by process id."""

    def __init__(self, home: Path, env: dict[str, str], log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(self.port), "-w",
             str(REPO / "workspace.yaml")], cwd=REPO, env={**env, "DAGSTER_HOME": str(home)},
            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def gql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        assert not payload.get("errors"), payload["errors"]
        return payload["data"]

    def ready(self) -> bool:
        try:
            entries = self.gql("{ workspaceOrError { ... on Workspace { locationEntries { "
                               "locationOrLoadError { __typename } } } } }")["workspaceOrError"]["locationEntries"]
        except OSError:
            return False
        return bool(entries) and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"

    def launch(self, *assets: str, partition: str | None = None) -> str:
        tags = [{"key": "dagster/partition", "value": partition}] if partition else []
        data = self.gql(
            "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename "
            "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }",
            {"p": {"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                                "jobName": "__ASSET_JOB", "assetSelection": [{"path": [a]} for a in assets]},
                   "runConfigData": {}, "mode": "default", "executionMetadata": {"tags": tags}}})["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", data
        return data["run"]["runId"]

    def status(self, run_id: str) -> str:
        return self.gql("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                        {"id": run_id})["runOrError"]["status"]

    def kill(self) -> None:
        """``kill -9`` of the whole UI: webserver, daemon, code server and run workers."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        stop_group(self.proc, timeout=60)


def _worker_pid(home: Path, run_id: str) -> int | None:
    instance = DagsterInstance.from_config(str(home))
    try:
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            found = re.search(r"Started process for run \(pid: (\d+)\)", entry.dagster_event.message or "")
            if found:
                return int(found.group(1))
    finally:
        instance.dispose()
    return None


def test_the_ui_fails_dead_runs_refuses_a_busy_root_and_keeps_launching(tiny_tiles, tmp_path):
    root, home = tmp_path / "data", tmp_path / "data" / "dagster_home"
    env = _env(root, tiny_tiles)
    log = tmp_path / "make_run.log"
    run = _make_run(env, log, tmp_path)  # creates the home with the project's dagster.yaml
    try:
        _wait_for("first step", lambda: "==> materializing" in log.read_text(), 600, run, log)  # home created
        started = _wait_for("started make run", lambda: _runs(home, statuses=[DagsterRunStatus.STARTED]), 600, run,
                            log)
    finally:
        _kill(run)
    dead, = started
    assert _runs(home, run_ids=[dead.run_id])[0].status == DagsterRunStatus.STARTED

    ui = DagsterDev(home, env, tmp_path / "dagster_dev.log")  # no make ui first step: the daemon alone
    try:
        _wait_for("dagster dev", ui.ready, 300, ui.proc, ui.log)
        # the daemon's run monitoring notices the dead make run's run (poll interval 10 s)
        _wait_for("dead make run failed", lambda: ui.status(dead.run_id) == "FAILURE", 120, ui.proc, ui.log)
        assert any(f"make run process {run.pid}" in m for m in _failure_messages(home, dead.run_id))

        # a make run holding the data root: a launch from the UI is refused, with the reason
        from aerial_assets.defs.run_guard import RUN_LOCK, RunLock

        lock = RunLock(str(root / RUN_LOCK), str(root))
        try:
            refused = ui.launch("labeled_tiles")
            _wait_for("refused launch", lambda: ui.status(refused) == "FAILURE", 120, ui.proc, ui.log)
        finally:
            lock.release()
        assert any(f"another make run (pid {os.getpid()}" in m for m in _failure_messages(home, refused))

        # the whole UI killed during a run (its code server would otherwise report its worker's death itself)
        victim = ui.launch("labeled_tiles")
        _wait_for("started UI run", lambda: ui.status(victim) == "STARTED", 300, ui.proc, ui.log)
        pid = _worker_pid(home, victim)
    finally:
        ui.kill()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_for("worker gone", lambda: not Path(f"/proc/{pid}").exists() or
              Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 60)
    assert [r.status for r in _runs(home, run_ids=[victim])] == [DagsterRunStatus.STARTED]

    ui = DagsterDev(home, env, tmp_path / "dagster_dev_2.log")
    try:
        _wait_for("dagster dev", ui.ready, 300, ui.proc, ui.log)
        _wait_for("killed UI run failed", lambda: ui.status(victim) == "FAILURE", 120, ui.proc, ui.log)
        assert any(f"run worker process {pid}" in m for m in _failure_messages(home, victim))
        after = ui.launch("labeled_tiles")  # and the queue moves on
        _wait_for("next UI run", lambda: ui.status(after) in ("SUCCESS", "FAILURE"), 600, ui.proc, ui.log)
        assert ui.status(after) == "SUCCESS", ui.log.read_text()[-3000:]

        # a make run while a UI run works on the same root is refused, naming that run
        features = ui.launch("backbone_models", "tile_features", partition="mobilenet_v2")
        _wait_for("started features run", lambda: ui.status(features) == "STARTED", 300, ui.proc, ui.log)
        refused = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", "--skip-counties"], cwd=tmp_path,
                                 env=env, capture_output=True, text=True, timeout=300)
        assert ui.status(features) == "STARTED", "the UI run ended before make run checked: inconclusive"
        assert refused.returncode == 3, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert f"make run: refused: run {features} (run worker process" in refused.stderr
        _wait_for("features run", lambda: ui.status(features) in ("SUCCESS", "FAILURE"), 600, ui.proc, ui.log)
        assert ui.status(features) == "SUCCESS", ui.log.read_text()[-3000:]
    finally:
        ui.stop()


# --- case 5: two runs at once -------------------------------------------------------------------------------


def test_a_second_make_run_on_the_same_root_is_refused_in_one_line(tiny_tiles, tmp_path):
    root = tmp_path / "data"  # fresh: the Dagster home does not exist yet, both runs would create it
    env = _env(root, tiny_tiles)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    runs = [_make_run(env, log, tmp_path) for log in logs]
    ui = subprocess.Popen([sys.executable, "-m", "aerial_assets.defs.run_guard"], cwd=tmp_path,  # make ui starting too
                          env={**env, "DAGSTER_HOME": str(root / "dagster_home")}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        done = _wait_for("refused run", lambda: [r for r in runs if r.poll() is not None], 180)
        assert len(done) == 1, [log.read_text()[-2000:] for log in logs]
        loser, = done
        winner = runs[1 - runs.index(loser)]
        text = logs[runs.index(loser)].read_text()
        refusal = [line for line in text.splitlines() if line.startswith("make run: refused:")]
        assert loser.returncode == 3 and len(refusal) == 1, text[-3000:]
        assert f"another make run (pid {winner.pid} on {socket.gethostname()}" in refusal[0]
        assert f"is using the data root {root}" in refusal[0] and "Traceback" not in text
        winner_log = logs[runs.index(winner)]
        _wait_for("winner's first step", lambda: "==> materializing labeled_tiles" in winner_log.read_text(), 300,
                  winner, winner_log)
        assert ui.wait(timeout=300) == 0, ui.stdout.read()
        assert "already exists" not in winner_log.read_text()
    finally:
        for proc in runs:
            _kill(proc)
        if ui.poll() is None:
            ui.kill()
            ui.wait()
    # the lock died with its holder: a new run can take it at once
    from aerial_assets.defs.run_guard import RUN_LOCK, RunLock

    RunLock(str(root / RUN_LOCK), str(root)).release()


# --- case 9: an unreachable service -----------------------------------------------------------------------


def test_an_unreachable_azure_endpoint_fails_fast_in_one_line(tmp_path):
    port = _free_port()  # bound, then closed: nothing listens there, connections are refused
    endpoint = f"http://127.0.0.1:{port}/acct"
    key = base64.b64encode(os.urandom(32)).decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AERIAL_", "AZURE_STORAGE_"))}
    env.pop("DAGSTER_HOME", None)
    env.update(AERIAL_DEPLOYMENT="azure", AERIAL_DATA_ROOT="az://data/run", AERIAL_TRAINING_TILES="az://data/tiles",
               AZURE_STORAGE_ACCOUNT_NAME="acct", AZURE_STORAGE_ACCOUNT_KEY=key, AZURE_STORAGE_BLOB_ENDPOINT=endpoint,
               AERIAL_BACKBONES="mobilenet_v2", AERIAL_ALGORITHMS="logistic_regression", AERIAL_PRESET="fast",
               PYSPARK_PYTHON=sys.executable)
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("make run against a refusing endpoint was still retrying after 90 s")
    took = time.monotonic() - started
    errors = [line for line in done.stderr.splitlines() if line.startswith("make run:")]
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(errors) == 1 and f"the Blob endpoint {endpoint} " in errors[0] and "unreachable" in errors[0], errors
    assert "Traceback" not in done.stderr + done.stdout and key not in done.stderr + done.stdout
    assert took < 60, f"{took:.0f} s (the process's own start included)"

    # the storage layer alone: one read gives up within seconds, naming the endpoint, never the key
    from aerial_assets.errors import StorageError
    from aerial_assets.storage.azure import AzureStorage
    from aerial_assets.storage.azure_credentials import AzureCredentials

    store = AzureStorage(AzureCredentials(account_name="acct", account_key=key, blob_endpoint=endpoint))
    started = time.monotonic()
    with pytest.raises(StorageError) as failure:
        store.read_text("az://data/run/model_leaderboard/leaderboard.csv")
    assert time.monotonic() - started < 30
    assert endpoint in str(failure.value) and key not in str(failure.value)
