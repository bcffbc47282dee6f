"""``make mlflow-ui`` always ends when it is stopped, even when the server it runs ignores SIGTERM (real processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

SUPERVISED = r'''
import sys
from aerial_assets.tracking.ui import supervise
# a "server" that ignores SIGTERM, with a child of its own: both must be gone when the supervisor returns
server = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
          "print(child.pid, flush=True); time.sleep(300)")
sys.exit(supervise([sys.executable, "-c", server], {}, grace_s=1.0))
'''


def test_a_server_that_ignores_sigterm_is_killed_with_its_children():
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISED], stdout=subprocess.PIPE, text=True)
    child = int(supervisor.stdout.readline())
    time.sleep(0.5)  # the supervisor's handlers are in place once its server runs
    started = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0  # stopped on request
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
