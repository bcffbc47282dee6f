"""``make mlflow-ui``: MLflow's own UI on the embedded store of the current data root, on 127.0.0.1 only.

``python -m aerial_assets.tracking.ui [--port N]`` resolves the store as the code location does
(:func:`~aerial_assets.tracking.mlflow_store.embedded_folder`) and replaces itself with ``mlflow server``, so the
process id ``make`` starts is the server's. With ``MLFLOW_TRACKING_URI`` set, the runs live on that server: its own
UI shows them, and this says where.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

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
    os.execve(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
