"""Where MLflow runs and models go, and the runs and model versions this project writes there. No Dagster import.

Every call goes through an explicit :class:`mlflow.MlflowClient` for :class:`Target`: MLflow's process-wide
tracking URI and active run are never set, because one Dagster process may serve data roots with different stores
(tests do, and so does a code location re-read with new settings).

Embedded by default: ``sqlite:///$AERIAL_DATA_ROOT/mlflow/mlflow.db`` with artifacts in ``mlflow/artifacts``, so
``make demo`` fills a store that ``make mlflow-ui`` opens. ``MLFLOW_TRACKING_URI`` points elsewhere (an MLflow server,
``databricks``, ``azureml://...``); MLflow's own variables carry that server's credentials.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from aerial_assets.errors import ConfigurationError
from aerial_assets.storage.core import is_local, join, local_path
from aerial_assets.storage.layout import MLFLOW_DIR

#: The alias the champion's registered version carries (moved on every champion_model materialization).
CHAMPION_ALIAS = "champion"
DEFAULT_EXPERIMENT = "aerial_assets"
DEFAULT_MODEL_NAME = "aerial_assets_land_use"
DB_FILE, ARTIFACTS = "mlflow.db", "artifacts"


@dataclass(frozen=True)
class Target:
    """A tracking store and the names used in it."""

    tracking_uri: str
    experiment: str
    model_name: str
    artifact_root: str = ""  # the embedded store's artifacts folder (file URI); a server chooses its own

    @property
    def embedded(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")


def embedded_folder(data_root: str, fallback_root: str) -> str:
    """The embedded store's local folder: ``<data root>/mlflow``, or ``<fallback_root>/mlflow`` when the data root is
    in the cloud (SQLite needs a local file; the Dagster home stays local the same way)."""
    return join(local_path(data_root if is_local(data_root) else fallback_root), MLFLOW_DIR)


def embedded_target(folder: str, experiment: str = DEFAULT_EXPERIMENT,
                    model_name: str = DEFAULT_MODEL_NAME, artifact_root: str = "") -> Target:
    """The SQLite store under a local ``folder`` (``$AERIAL_DATA_ROOT/mlflow``), with the artifacts in its
    ``artifacts/`` or at ``artifact_root`` (an Azure data root's :func:`azure_artifact_root`)."""
    folder = os.path.abspath(folder)
    return Target(f"sqlite:///{folder}/{DB_FILE}", experiment, model_name,
                  artifact_root=artifact_root or f"file://{folder}/{ARTIFACTS}")


def azure_artifact_root(account: str, container: str, key: str) -> str:
    """``<data root>/mlflow/artifacts`` as the URI MLflow's Azure Blob artifact store reads and writes
    (``wasbs://container@account.blob.core.windows.net/...``; MLflow takes the credential from
    ``AZURE_STORAGE_CONNECTION_STRING`` or ``DefaultAzureCredential``)."""
    path = "/".join(p for p in (key.strip("/"), MLFLOW_DIR, ARTIFACTS) if p)
    return f"wasbs://{container}@{account}.blob.core.windows.net/{path}"


@dataclass(frozen=True)
class RunRef:
    """A logged run: what the Dagster metadata and the records point at."""

    run_id: str
    experiment_id: str
    url: str  # the run in MLflow's UI (a server's address, or make mlflow-ui's for the embedded store)


def _client(target: Target):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """MLflow's INFO lines (creating the SQLite tables, validating the input example) and its download progress bars
    off while this project calls it: a run's log keeps the lines that say what happened. Warnings still show."""
    import mlflow  # noqa: F401 - its import configures its loggers: first, so that the levels set here hold

    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def public_address(uri: str) -> str:
    """``uri`` without credentials in its userinfo or query (what metadata and messages may show)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or parts.scheme in ("sqlite", "file"):
        return uri
    host = parts.hostname or ""
    return urllib.parse.urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def check_reachable(target: Target, timeout_s: float = 10.0) -> None:
    """Fail in one line when an MLflow server does not answer (MLflow's client would retry for minutes per call).

    HTTP(S) servers are asked for ``/health`` (MLflow's server answers it; a proxy in front may want credentials,
    so any HTTP answer counts as reachable). ``databricks`` and ``azureml`` URIs are left to MLflow's client, which
    reads their credentials; the embedded store only needs its folder."""
    uri = target.tracking_uri
    scheme = urllib.parse.urlsplit(uri).scheme
    if target.embedded:
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///").replace("sqlite://", "", 1)) or ".", exist_ok=True)
        return
    if scheme not in ("http", "https"):
        return
    health = public_address(uri).rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s):  # noqa: S310 - the user's configured server
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigurationError(f"the MLflow tracking server at {public_address(uri)} (MLFLOW_TRACKING_URI) is "
                                 f"unreachable: {reason}. Start it, fix MLFLOW_TRACKING_URI, or set AERIAL_MLFLOW=0 "
                                 "to run without MLflow") from None


def experiment_id(client, target: Target) -> str:
    """The experiment's id, created on first use (in the embedded store, with its artifacts under the data root)."""
    found = client.get_experiment_by_name(target.experiment)
    if found is not None:
        return found.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(target.experiment, artifact_location=target.artifact_root or None)
    except MlflowException as exc:  # another process created it between the two calls
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(target.experiment).experiment_id


def run_url(target: Target, experiment: str, run_id: str, ui_port: int = 5000) -> str:
    """The run's page: on the server itself, or where ``make mlflow-ui`` serves the embedded store."""
    scheme = urllib.parse.urlsplit(target.tracking_uri).scheme
    base = (public_address(target.tracking_uri).rstrip("/") if scheme in ("http", "https")
            else f"http://127.0.0.1:{ui_port}")
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


@contextlib.contextmanager
def _new_run(client, target: Target, run_name: str, params: Mapping[str, object], metrics: Mapping[str, float],
             tags: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """A new run with its params, metrics and tags logged: yields (experiment id, run id); the run ends FINISHED, or
    FAILED when the block raises. Never reuses a run: re-materializing a partition adds one beside the others."""
    from mlflow.entities import Metric, Param

    experiment = experiment_id(client, target)
    run_id = client.create_run(experiment, run_name=run_name, tags=dict(tags)).info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                         params=[Param(k, _param_text(v)) for k, v in params.items()])
        yield experiment, run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def log_run(target: Target, *, run_name: str, params: Mapping[str, object], metrics: Mapping[str, float],
            tags: Mapping[str, str], files: Mapping[str, bytes]) -> RunRef:
    """A new finished run with these params, metrics, tags and artifact files (name -> bytes)."""
    client = _client(target)
    with _new_run(client, target, run_name, params, metrics, tags) as (experiment, run_id):
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                with open(os.path.join(tmp, name), "wb") as handle:
                    handle.write(data)
            client.log_artifacts(run_id, tmp)
    return RunRef(run_id, experiment, run_url(target, experiment, run_id))


def _param_text(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:6000]  # MLflow's limit of a param value


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and the run that logged it."""

    name: str
    version: str
    run: RunRef


def register_model(target: Target, model_dir: str, *, run_name: str, params: Mapping[str, object],
                   metrics: Mapping[str, float], tags: Mapping[str, str], alias: str = CHAMPION_ALIAS
                   ) -> RegisteredVersion:
    """Log the saved MLflow model folder ``model_dir`` as the artifact ``model`` of a new run, register it as a new
    version of ``target.model_name`` and move ``alias`` to that version."""
    from mlflow.exceptions import MlflowException

    client = _client(target)
    with _new_run(client, target, run_name, params, metrics, tags) as (experiment, run_id):
        client.log_artifacts(run_id, model_dir, "model")
        try:
            client.create_registered_model(target.model_name, description="Land use of aerial tiles: the champion "
                                           "of aerial_assets' model_leaderboard (input: a column 'image' of encoded "
                                           "image bytes)")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
        version = client.create_model_version(target.model_name, source, run_id=run_id, tags=dict(tags))
        client.set_registered_model_alias(target.model_name, alias, version.version)
    return RegisteredVersion(target.model_name, str(version.version), RunRef(run_id, experiment,
                                                                            run_url(target, experiment, run_id)))
