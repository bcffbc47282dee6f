"""The code location: assets, checks, jobs, schedule, sensor and the resources of the current deployment.

:func:`build_resources` is the only place that reads the environment, and it runs when the code
location loads (``@definitions``), never at import time.
"""


import os
from collections.abc import Mapping

from dagster import (
    Definitions,
    EnvVar,
    definitions,
    in_process_executor,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from aerial_assets.defs.assets import agreement, backbones, features, maps, raster_labels, scoring, tiles, training
from aerial_assets.defs.automation import county_job, county_registry_sensor, rescore_counties_schedule, rescore_job
from aerial_assets.defs.resources import (
    BackboneWeightsResource,
    CountyRegistryResource,
    MlflowResource,
    SparkResource,
    StorageResource,
    TrainingRastersResource,
    TrainingTilesResource,
)
from aerial_assets.errors import ConfigurationError
from aerial_assets.safety.redaction import has_secret, redact
from aerial_assets.settings import DEFAULT_DATA_ROOT, SPARK_AZURE_SCHEMES, SPARK_MODES, AerialSettings
from aerial_assets.spark.session import SparkSettings
from aerial_assets.storage.azure import parse as parse_azure_uri
from aerial_assets.storage.azure_credentials import (
    ENV_ACCOUNT_KEY,
    ENV_ACCOUNT_NAME,
    ENV_BLOB_ENDPOINT,
    ENV_CONNECTION_STRING,
    ENV_SAS_TOKEN,
    AzureCredentials,
)
from aerial_assets.storage.core import AZURE_SCHEMES, is_local, scheme_of
from aerial_assets.tracking.mlflow_store import DEFAULT_EXPERIMENT, azure_artifact_root, embedded_folder

ASSET_MODULES = [tiles, backbones, features, training, scoring, maps, agreement, raster_labels]


DEPLOYMENTS = ("local", "azure")
AZURE_URI_SETTINGS = ("AERIAL_DATA_ROOT", "AERIAL_TRAINING_TILES", "AERIAL_COUNTIES", "AERIAL_TRAINING_RASTERS")
# Settings that name a location: every output path, log line and metadata value is built from them, so a credential
# inside one (a SAS query string, user:password@) would travel everywhere. Credentials have settings of their own.
URI_SETTINGS = (*AZURE_URI_SETTINGS, "AERIAL_LABEL_MAP", "AERIAL_WEIGHTS_DIR")


def check_uri_settings(env: Mapping[str, str]) -> None:
    """Refuse a location setting that carries a credential, naming the setting but never the secret."""
    for name in URI_SETTINGS:
        value = env.get(name, "")
        if value and has_secret(value):
            raise ConfigurationError(
                f"{name}={redact(value)} carries a credential (a query string such as a SAS token, or a password): "
                f"give the location without it and the credential in {ENV_SAS_TOKEN}, {ENV_ACCOUNT_KEY} or "
                f"{ENV_CONNECTION_STRING} (docs/deployment/azure.md)")


def _local_storage(env: Mapping[str, str], config: AerialSettings) -> StorageResource:
    for name in AZURE_URI_SETTINGS:
        if scheme_of(env.get(name, "")) in AZURE_SCHEMES:
            raise ConfigurationError(f"{name}={env[name]} is an Azure URI but no Azure credentials are set: set "
                                     f"{ENV_CONNECTION_STRING}, or {ENV_ACCOUNT_NAME} (with a key, a SAS token or a "
                                     "managed identity), see docs/deployment/azure.md")
    return StorageResource(data_root=config.data_root)


def _azure_storage(config: AerialSettings) -> StorageResource:
    """Credentials are ``EnvVar`` s: Dagster resolves them when a run starts and never records their values."""
    settings: dict[str, object] = {}
    if config.azure_connection_string.get_secret_value():
        settings["azure_connection_string"] = EnvVar(ENV_CONNECTION_STRING)
    elif config.azure_account_name:
        settings["azure_account_name"] = EnvVar(ENV_ACCOUNT_NAME)
        if config.azure_account_key.get_secret_value():
            settings["azure_account_key"] = EnvVar(ENV_ACCOUNT_KEY)
        elif config.azure_sas_token.get_secret_value():
            settings["azure_sas_token"] = EnvVar(ENV_SAS_TOKEN)
        # else DefaultAzureCredential (managed identity, workload identity, AZURE_CLIENT_* or az login)
    else:
        raise ConfigurationError(f"the azure deployment needs {ENV_CONNECTION_STRING}, or {ENV_ACCOUNT_NAME} with "
                                 f"{ENV_ACCOUNT_KEY}, {ENV_SAS_TOKEN} or a managed identity (DefaultAzureCredential)")
    if config.azure_blob_endpoint:
        settings["azure_blob_endpoint"] = EnvVar(ENV_BLOB_ENDPOINT)
    spark_storage = config.spark_storage
    if spark_storage not in SPARK_MODES:
        raise ConfigurationError(f"unknown AERIAL_SPARK_STORAGE {spark_storage!r}: valid values: {', '.join(SPARK_MODES)}")
    scheme = config.spark_azure_scheme
    if scheme not in SPARK_AZURE_SCHEMES:
        raise ConfigurationError(f"unknown AERIAL_SPARK_AZURE_SCHEME {scheme!r}: valid values: "
                                 f"{', '.join(SPARK_AZURE_SCHEMES)} (abfss: ADLS Gen2 accounts; wasbs: Blob Storage "
                                 "accounts, HDInsight's default file system)")
    return StorageResource(data_root=config.data_root, spark_storage=spark_storage,
                           spark_azure_scheme=scheme, **settings)


def deployment_of(env: Mapping[str, str]) -> str:
    """``AERIAL_DEPLOYMENT`` when set; else ``azure`` when a data setting is an Azure URI *and* an Azure
    credential setting is present (a user who gives both means Azure: asking for a third switch only gets in
    the way), else ``local``. An Azure URI without credentials stays ``local``, whose check then says what
    is missing."""
    explicit = AerialSettings.from_env(env).deployment
    if explicit:
        return explicit
    azure_uri = any(scheme_of(env.get(name, "")) in AZURE_SCHEMES for name in AZURE_URI_SETTINGS)
    credentials = any(env.get(name) for name in (ENV_CONNECTION_STRING, ENV_ACCOUNT_NAME))
    return "azure" if azure_uri and credentials else "local"


def build_resources(env: Mapping[str, str]) -> dict[str, object]:
    """Resources for the deployment :func:`deployment_of` selects (``local`` by default, or ``azure``).

    The keys are the same in every deployment; only the storage settings differ. Secrets are never read
    here: only whether they are set, to pick the kind of credential, whose value Dagster reads at run time.
    """
    check_uri_settings(env)
    config = AerialSettings.from_env(env)  # every setting parsed and checked (aerial_assets/settings.py)
    deployment = deployment_of(env)
    if deployment not in DEPLOYMENTS:
        raise ConfigurationError(f"unknown AERIAL_DEPLOYMENT {deployment!r}: valid deployments: "
                                 f"{', '.join(sorted(DEPLOYMENTS))}")
    storage = _azure_storage(config) if deployment == "azure" else _local_storage(env, config)
    spark = SparkSettings.from_settings(config)  # the same reading as make run's early start (spark/session.py)
    return {
        "spark": SparkResource(master=spark.master, remote=spark.remote,
                               remote_token=EnvVar("AERIAL_SPARK_TOKEN") if config.spark_token_set else "",
                               ship_code=config.spark_ship_code,
                               driver_memory=spark.driver_memory, jars=spark.jars, storage=storage,
                               featurize_engine=config.featurize_engine, verbose=spark.verbose,
                               parallelism=config.spark_parallelism),
        "storage": storage,
        "training_tiles": TrainingTilesResource(uri=config.training_tiles, label_map=config.label_map,
                                                  gsd_m=config.training_gsd_m),
        "training_rasters": TrainingRastersResource(uri=config.training_rasters),
        "counties": CountyRegistryResource(uri=config.counties),
        "backbone_weights": BackboneWeightsResource(weights_dir=config.weights_dir),
        "mlflow": _mlflow(config, env, deployment),
    }


def _mlflow(config: AerialSettings, env: Mapping[str, str], deployment: str) -> MlflowResource:
    """The tracking store: a server through an ``EnvVar`` (``MLFLOW_TRACKING_URI``), else the embedded one under the
    data root. With an Azure data root its SQLite file stays local (./.aerial_data/mlflow, as the Dagster home) and
    its artifacts go to ``<data root>/mlflow/artifacts`` when the credential is one MLflow's Azure store reads (a
    connection string, or DefaultAzureCredential); with a key or a SAS token they stay beside the database. One
    experiment per data root: ``aerial_assets`` in a local root's own store, ``aerial_assets:<root>`` elsewhere."""
    root = config.data_root
    server = bool(config.mlflow_tracking_uri)
    artifacts = ""
    if deployment == "azure" and not is_local(root):
        credentials = AzureCredentials.from_env(env)  # the kind and the account only: no secret is kept here
        if credentials.kind in ("connection string", "DefaultAzureCredential"):
            path = parse_azure_uri(root)
            artifacts = azure_artifact_root(path.account or credentials.account, path.container, path.key)
    shared = server or not is_local(root)
    experiment = config.mlflow_experiment or (f"{DEFAULT_EXPERIMENT}:{root}" if shared else DEFAULT_EXPERIMENT)
    return MlflowResource(enabled=config.mlflow, embedded_dir=embedded_folder(root, DEFAULT_DATA_ROOT),
                          artifact_root=artifacts, experiment=experiment,
                          tracking_uri=EnvVar("MLFLOW_TRACKING_URI") if server else "",
                          model_name=config.mlflow_model_name)


def build_defs(env: Mapping[str, str]) -> Definitions:
    """Everything Dagster serves, for the given environment."""
    return Definitions(
        assets=load_assets_from_modules(ASSET_MODULES),
        asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
        jobs=[county_job, rescore_job],
        schedules=[rescore_counties_schedule],
        sensors=[county_registry_sensor],
        resources=build_resources(env),
        # Spark does the parallel work: one process per run keeps one Spark session for all steps.
        executor=in_process_executor,
    )


@definitions
def defs() -> Definitions:
    return build_defs(os.environ)
