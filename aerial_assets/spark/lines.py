"""The Spark lines the project runs on (3.5 and 4.x), told apart in one place, by what a session can do.

A classic PySpark client must run the same Spark line as its cluster, and a Spark Connect client the same line
as its server: a 3.5 client against a 4.x standalone master or Connect server fails deep inside RPC or gRPC
with messages that never say "version". :func:`check_connect_server` and :func:`check_standalone_master` compare
the two at session start and stop with one line naming both versions and the command that installs the matching
line. YARN needs no check: a pip-installed PySpark ships its own Spark jars to YARN's containers.

Where the lines' APIs differ, the code asks the session what it can do (:func:`has_connect_progress`), never the
version number, so a build that has a feature uses it. No Dagster import.
"""

from __future__ import annotations

import os
import re
import urllib.request

from aerial_assets.errors import ConfigurationError


def line_of(version: str) -> str:
    """``"3.5"`` for ``"3.5.9"``, ``"4.3"`` for ``"4.3.0.dev1"``."""
    parts = re.findall(r"\d+", version or "")
    return ".".join(parts[:2]) if len(parts) >= 2 else version


def client_version() -> str:
    import pyspark

    return pyspark.__version__


def bundled_jar_version(name: str) -> str | None:
    """The version of jar ``name`` inside the installed pyspark (``jars/<name>-<version>.jar``): what a line bundles,
    e.g. ``hadoop-client-api`` 3.3.4 (3.5.x) or 3.5.0 (4.3), ``scala-library`` 2.12.x (3.5) or 2.13.x (4.x)."""
    import pyspark

    jars = os.path.join(os.path.dirname(os.path.abspath(pyspark.__file__)), "jars")
    for jar in sorted(os.listdir(jars)) if os.path.isdir(jars) else []:
        match = re.fullmatch(rf"{re.escape(name)}-(\d[^-]*)\.jar", jar)
        if match:
            return match.group(1)
    return None


def install_command(version: str) -> str:
    """How to get a client of ``version``'s line (docs/deployment/spark-lines.md)."""
    return f"make install PYSPARK={version} (then make run PYSPARK={version}), or pip install 'pyspark[connect]=={version}'"


def mismatch(what: str, server: str, client: str) -> ConfigurationError | None:
    """The error for a server of another line than the client, else None."""
    if not server or line_of(server) == line_of(client):
        return None
    return ConfigurationError(f"{what} runs Spark {server} (the {line_of(server)} line) but this client is pyspark "
                              f"{client} (the {line_of(client)} line): a client must match its cluster's line; "
                              f"install the matching one: {install_command(server)}")


def check_connect_server(session, where: str) -> None:
    """Over Spark Connect, ``session.version`` is the server's: refuse another line than the client's."""
    error = mismatch(f"the Spark Connect server at {where}", str(session.version), client_version())
    if error is not None:
        raise error


_VERSION_SPAN = re.compile(r'class="version[^"]*"[^>]*>\s*([0-9][0-9A-Za-z.\-]*)\s*<')


def standalone_master_version(master: str, ui_port: int = 8080, timeout_s: float = 3.0) -> str | None:
    """The Spark version a standalone master's web UI shows (``spark://host:port`` -> ``http://host:ui_port``),
    or None when the UI cannot be read (another port, a proxy, no UI): the check is then skipped, not failed."""
    match = re.match(r"spark://([^:/,]+)", master or "")
    if not match:
        return None
    try:
        with urllib.request.urlopen(f"http://{match.group(1)}:{ui_port}/", timeout=timeout_s) as response:  # noqa: S310
            page = response.read(200_000).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    found = _VERSION_SPAN.search(page)
    return found.group(1) if found else None


def check_standalone_master(master: str, ui_port: int = 8080) -> None:
    """Before a classic session opens on a standalone master: refuse a master of another Spark line."""
    error = mismatch(f"the standalone master {master}", standalone_master_version(master, ui_port) or "",
                     client_version())
    if error is not None:
        raise error


def has_connect_progress(session) -> bool:
    """Whether a Spark Connect session streams stage progress to the client (``registerProgressHandler``: 4.0+)."""
    return callable(getattr(session, "registerProgressHandler", None))


def connect_runs_pyspark_ml() -> bool:
    """Whether pyspark.ml's estimators and models run over Spark Connect with this client (4.0+: ``pyspark.ml``
    forwards ``fit``/``transform`` to the server). The 3.5 line's client cannot (its ``pyspark.ml.connect`` has
    a few estimators of its own, none of the project's), so the graph cannot train or score over its Connect."""
    from pyspark.ml import util

    return hasattr(util, "try_remote_fit")


def check_connect_ml(where: str) -> None:
    """Refuse, at session start, a Spark Connect session that could not train or score (see above)."""
    if not connect_runs_pyspark_ml():
        raise ConfigurationError(
            f"pyspark {client_version()} cannot run pyspark.ml over Spark Connect ({where}), and every classifier of "
            "the graph is a pyspark.ml model: Spark Connect needs the 4.x line (make install PYSPARK=4.3.0); with the "
            "3.5 line, use a classic session (AERIAL_SPARK_MASTER=spark://..., yarn or local[N]) instead of "
            "SPARK_REMOTE")

