"""``make mlflow-ui``: MLflow's own UI on the embedded store of the current data root, on 127.0.0.1 only.

``python -m aerial_assets.tracking.ui [--port N]`` resolves the store as the code location does
(:func:`~aerial_assets.tracking.mlflow_store.embedded_folder`) and runs ``mlflow server`` in a process group of its
own, which it stops when it is stopped itself (SIGTERM, or Ctrl-C): SIGTERM to that group, then SIGKILL to whatever
is left after a grace period. Why not leave it to ``mlflow server``: its parent process forwards the signal to its
uvicorn child and waits for it, and when both got the signal at once (Ctrl-C reaches a terminal's whole process
group) it was seen to hang with the child already gone, so ``make mlflow-ui`` never ended. With
``MLFLOW_TRACKING_URI`` set, the runs live on that server: its own UI shows them, and this says where.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading

from aerial_assets.errors import AerialError
from aerial_assets.settings import DEFAULT_DATA_ROOT, AerialSettings
from aerial_assets.tracking.mlflow_store import embedded_folder, embedded_target, public_address

HOST = "127.0.0.1"


def server_command(folder: str, port: int) -> list[str]:
    """``mlflow server`` on loopback, one worker, over the embedded store in ``folder``."""
    target = embedded_target(folder)
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    return [mlflow, "server", "--host", HOST, "--port", str(port), "--workers", "1",
            "--backend-store-uri", target.tracking_uri, "--default-artifact-root", target.artifact_root]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make mlflow-ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    try:
        config = AerialSettings.from_env(os.environ)
    except AerialError as exc:
        print(f"make mlflow-ui: {exc}", file=sys.stderr)
        return 2
    if config.mlflow_tracking_uri:
        print(f"MLFLOW_TRACKING_URI is set: the runs are on {public_address(config.mlflow_tracking_uri)}; open its UI")
        return 0
    folder = embedded_folder(config.data_root, DEFAULT_DATA_ROOT)
    os.makedirs(folder, exist_ok=True)
    print(f"MLflow UI of {folder} on http://{HOST}:{args.port} (Ctrl-C stops it)", flush=True)
    command = server_command(folder, args.port)
    # MLflow 3's server also starts a job runner (a pool of Huey consumers, for GenAI evaluation jobs): seven more
    # processes this project never gives work to, off unless the user asks for them
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                               "false")}
    return supervise(command, env)


def supervise(command: list[str], env: dict[str, str], grace_s: float = 15.0) -> int:
    """Run ``command`` in a new process group until it exits or this process is asked to stop; then stop the whole
    group (SIGTERM, SIGKILL after ``grace_s``). Returns the server's exit status (0 when stopped on request)."""
    server = subprocess.Popen(command, env=env, start_new_session=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while server.poll() is None and not stop.wait(0.5):
        pass
    if server.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # the server's own children, and a server that hung
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    return 0 if stop.is_set() else server.returncode


if __name__ == "__main__":
    sys.exit(main())
