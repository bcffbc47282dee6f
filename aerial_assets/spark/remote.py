"""Spark Connect endpoints and their probe, and shipping this package to the executors. No Dagster import.

Over Spark Connect (and on a cluster) the executors have the third-party packages but not this project's code,
which the functions run in ``mapInPandas`` need: :func:`ship_package` adds a zip of it to the session
(docs/deployment/clusters.md). :func:`check_reachable` turns an unreachable Connect server into one line before the
gRPC client would retry for minutes.
"""

from __future__ import annotations

import os

from aerial_assets.errors import ConfigurationError
from aerial_assets.spark.jobs import is_connect


def _host_port(remote: str) -> tuple[str, int]:
    target = remote.split("://", 1)[-1].split("/", 1)[0].split(";", 1)[0]
    host, _, port = target.rpartition(":")
    return (host or target).strip("[]"), int(port) if port.isdigit() else 15002


def connect_endpoint(remote: str) -> str:
    """``sc://host:port`` of a Connect URL, without its path or parameters (where a token would be)."""
    host, port = _host_port(remote)
    return f"sc://{host}:{port}"


def check_reachable(remote: str, timeout_s: float = 10.0) -> None:
    """Fail fast, in one line naming the endpoint, when a Spark Connect server does not answer: the gRPC client
    would otherwise retry for many minutes (and hang on SIGTERM). The token is never part of the message."""
    import socket

    host, port = _host_port(remote)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise ConfigurationError(
            f"the Spark Connect server at sc://{host}:{port} (SPARK_REMOTE) is unreachable: {exc}. Start it "
            "(sbin/start-connect-server.sh) or fix SPARK_REMOTE") from None


_SHIPPED: set[tuple[str, str]] = set()


def package_zip() -> str:
    """A zip of the ``aerial_assets`` package's modules, built once per content (its name carries a hash)."""
    import hashlib
    import tempfile
    import zipfile

    import aerial_assets

    package = os.path.dirname(os.path.abspath(aerial_assets.__file__))
    files = []
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    digest = hashlib.sha256()
    for full in files:
        digest.update(os.path.relpath(full, package).encode())
        with open(full, "rb") as handle:
            digest.update(handle.read())
    path = os.path.join(tempfile.gettempdir(), f"aerial_assets-{digest.hexdigest()[:16]}.zip")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for full in files:
                name = os.path.join("aerial_assets", os.path.relpath(full, package)).replace(os.sep, "/")
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(full, "rb") as handle:
                    archive.writestr(info, handle.read())
        os.replace(tmp, path)
    return path


def ship_package(session) -> str:
    """Add the package zip to a session's executors (once per session and content); returns its path.

    Spark Connect: ``addArtifacts(pyfile=True)``, on the path of this session's Python workers only. A classic
    session on a cluster: ``SparkContext.addPyFile``, on the path of every Python worker of the application.
    """
    path = package_zip()
    if is_connect(session):
        key = (str(getattr(session, "session_id", id(session))), path)
        if key not in _SHIPPED:
            session.addArtifacts(path, pyfile=True)
            _SHIPPED.add(key)
        return path
    key = (session.sparkContext.applicationId, path)
    if key not in _SHIPPED:
        session.sparkContext.addPyFile(path)
        _SHIPPED.add(key)
    return path
