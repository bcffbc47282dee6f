"""Every setting the project reads from the environment, declared once: name, type, default and meaning.

One pydantic-settings object, so that a setting is parsed and checked in one place (a bad value is one line naming
the variable), and the docs' settings reference and README's table are generated from the same declaration
(``aerial_assets/docs_reference.py``; a test keeps them equal). Code that needs a setting takes it from an
:class:`AerialSettings` built by :meth:`AerialSettings.from_env`, never from ``os.environ``.

Every field names its variable explicitly (``validation_alias``): most are ``AERIAL_*``, a few are the names
Spark, Azure's SDKs and Dagster users already know (``SPARK_REMOTE``, ``AZURE_STORAGE_*``). Secrets are
:class:`~pydantic.SecretStr`: only whether they are set is ever read here; their values reach the resources
through Dagster ``EnvVar`` s at run time. No Dagster, Spark or asset import: the run guard and the CLI's parser
read their defaults from here before anything heavy is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aerial_assets.errors import ConfigurationError

DEFAULT_DATA_ROOT = ".aerial_data"
DEFAULT_MASTER = "local[2]"
DEFAULT_DRIVER_MEMORY = "4g"
#: Where the backbone graphs run (``AERIAL_FEATURIZE_ENGINE``): onnxruntime in the Python workers (the default and the
#: faster: ``spark/featurization.py``), or SynapseML's ONNXModel in the JVM executors (``spark/synapseml_featurization``).
ENGINES = ("onnxruntime", "synapseml")
SPARK_MODES = ("staged", "direct")
SPARK_AZURE_SCHEMES = ("abfss", "wasbs")

#: Set while :meth:`AerialSettings.from_env` builds: the mapping it was given is the whole environment, and this
#: process's variables must not fill the settings it leaves unset.
_GIVEN_ONLY: ContextVar[bool] = ContextVar("aerial_settings_given_only", default=False)

#: The sections of the settings reference, in order: each field's ``json_schema_extra["section"]``.
SECTIONS = ("Data", "Training", "Spark", "Azure storage", "MLflow", "Logs and start-up")


def _field(env: str, default, section: str, doc: str, default_doc: str | None = None):
    """A setting: its variable, default, section of the reference, and the one-paragraph meaning users read."""
    return Field(default, validation_alias=env, description=doc,
                 json_schema_extra={"section": section, "env": env, "default_doc": default_doc})


class AerialSettings(BaseSettings):
    """The environment's settings, parsed. ``AerialSettings()`` reads this process's environment (pydantic-settings);
    :meth:`from_env` reads a mapping (a test's, or a CLI's copy of the environment), with the same checks."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", env_ignore_empty=True,
                                      populate_by_name=True, frozen=True)

    # Data
    training_tiles: str = _field(
        "AERIAL_TRAINING_TILES", "", "Data",
        "Folder of labelled tiles, `<class>/<image>` or `train/<class>/<image>` + `test/<class>/<image>`; a local "
        "path or an `az://` / `abfss://` URI.", "unset: the demo set")
    data_root: str = _field(
        "AERIAL_DATA_ROOT", DEFAULT_DATA_ROOT, "Data",
        "Where every output goes (see the output layout): a local folder, or `az://container/prefix` / `abfss://...`.",
        "`./.aerial_data`")
    counties: str = _field(
        "AERIAL_COUNTIES", "", "Data", "The county registry (YAML): each county's imagery rasters or STAC catalog.",
        "`$AERIAL_DATA_ROOT/counties.yaml`, else the demo county")
    training_rasters: str = _field(
        "AERIAL_TRAINING_RASTERS", "", "Data",
        "A YAML spec of imagery rasters, a land-cover raster and its legend: training tiles labelled from land cover; "
        "used when `AERIAL_TRAINING_TILES` is unset.", "unset")
    label_map: str = _field(
        "AERIAL_LABEL_MAP", "", "Data", "YAML mapping the folders' classes onto your taxonomy.",
        "unset: classes are the folder names")
    training_gsd_m: float = _field(
        "AERIAL_TRAINING_GSD_M", 0.0, "Data",
        "Metres per pixel of the labelled tiles, when they are not cut from rasters (for example `0.6`): the "
        "out-of-distribution check compares it with each county's imagery.",
        "unset: known only for tiles with a `tile_positions.csv`")
    weights_dir: str = _field(
        "AERIAL_WEIGHTS_DIR", "", "Data",
        "Folder of user-supplied weights files (`resnet18`, `alexnet`).", "`$AERIAL_DATA_ROOT/weights`")

    # Training
    preset: str | None = _field(
        "AERIAL_PRESET", None, "Training", "What `make run` trains and compares: `accurate` or `fast`.",
        "`accurate`")
    backbones: str | None = _field(
        "AERIAL_BACKBONES", None, "Training",
        "Backbones `make run` materializes, instead of the preset's (comma list).", "the preset's")
    algorithms: str | None = _field(
        "AERIAL_ALGORITHMS", None, "Training",
        "Classifiers `make run` trains, instead of the preset's (comma list).", "the preset's")

    # Spark
    spark_master: str = _field(
        "AERIAL_SPARK_MASTER", DEFAULT_MASTER, "Spark",
        "Spark master: `local[N]`, `spark://host:7077` (standalone) or `yarn` (HDInsight, client mode).")
    spark_remote: str = _field(
        "SPARK_REMOTE", "", "Spark", "A Spark Connect URL (`sc://host:15002`): the resource opens a Connect session.",
        "unset")
    spark_token: SecretStr = _field(
        "AERIAL_SPARK_TOKEN", SecretStr(""), "Spark",
        "A Spark Connect token (a Databricks PAT), appended to `SPARK_REMOTE` as `;token=` through a Dagster `EnvVar`.",
        "unset")
    spark_ship_code: bool = _field(
        "AERIAL_SPARK_SHIP_CODE", True, "Spark",
        "Over Spark Connect, ship the `aerial_assets` package to the session (`0`: the cluster has it installed).",
        "`1`")
    spark_parallelism: int = _field(
        "AERIAL_SPARK_PARALLELISM", 0, "Spark",
        "Task slots of the cluster (executor cores in total). Classic sessions read Spark's default parallelism; "
        "over Spark Connect the client cannot see the cluster, so set it there (else 2).", "unset: ask Spark")
    spark_driver_memory: str = _field(
        "AERIAL_SPARK_DRIVER_MEMORY", DEFAULT_DRIVER_MEMORY, "Spark",
        "Heap of the local Spark JVM (it runs the executors too).")
    spark_jars: str = _field(
        "AERIAL_SPARK_JARS", "", "Spark",
        "Comma list of jars for `spark.jars`, the whole list when set.",
        "unset: `.cache/jars` for local Spark, and SynapseML's `.cache/synapseml-jars` on the 3.5 line")
    spark_conf_dir: str = _field(
        "SPARK_CONF_DIR", "", "Spark",
        "A folder with `spark-defaults.conf`: how any other Spark setting reaches the session.", "unset")
    featurize_engine: Literal["onnxruntime", "synapseml"] = _field(
        "AERIAL_FEATURIZE_ENGINE", "onnxruntime", "Spark",
        "Where `tile_features` and `county_predictions` run the backbone graphs: `onnxruntime` in Spark's Python "
        "workers, or `synapseml` (SynapseML's `ONNXModel` in the JVM executors); the same features either way.")
    pyspark_python: str = _field(
        "PYSPARK_PYTHON", "", "Spark", "The interpreter of Spark's Python workers.",
        "the venv's python (set by the Makefile)")

    # Azure storage
    deployment: str = _field(
        "AERIAL_DEPLOYMENT", "", "Azure storage",
        "Which resources: `local` (local paths only) or `azure` (Azure credentials; `az://` / `abfs://` URIs); an "
        "explicit value wins.", "`azure` when an Azure URI and Azure credentials are set, else `local`")
    azure_connection_string: SecretStr = _field(
        "AZURE_STORAGE_CONNECTION_STRING", SecretStr(""), "Azure storage",
        "The storage account's connection string (takes precedence).", "unset")
    azure_account_name: str = _field(
        "AZURE_STORAGE_ACCOUNT_NAME", "", "Azure storage",
        "The account, with a key, a SAS token or neither (`DefaultAzureCredential`).", "unset")
    azure_account_key: SecretStr = _field(
        "AZURE_STORAGE_ACCOUNT_KEY", SecretStr(""), "Azure storage", "The account key.", "unset")
    azure_sas_token: SecretStr = _field(
        "AZURE_STORAGE_SAS_TOKEN", SecretStr(""), "Azure storage",
        "A SAS token (read, write, list, delete on the containers used).", "unset")
    azure_blob_endpoint: str = _field(
        "AZURE_STORAGE_BLOB_ENDPOINT", "", "Azure storage",
        "A non-default Blob endpoint (an emulator, a sovereign cloud).", "unset")
    spark_storage: str = _field(
        "AERIAL_SPARK_STORAGE", "staged", "Azure storage",
        "How Spark reaches Azure outputs: `staged` (local folders) or `direct` (Spark reads and writes Azure itself "
        "through hadoop-azure).")
    spark_azure_scheme: str = _field(
        "AERIAL_SPARK_AZURE_SCHEME", "abfss", "Azure storage",
        "`direct`: the URL scheme Spark gets, `abfss` (ADLS Gen2 accounts) or `wasbs` (Blob Storage accounts, "
        "HDInsight's default file system).")

    # MLflow
    mlflow: bool = _field(
        "AERIAL_MLFLOW", True, "MLflow",
        "`0`: no MLflow runs and no registered model (the leaderboard, metadata and champion bundle are the same).",
        "`1`")
    mlflow_tracking_uri: str = _field(
        "MLFLOW_TRACKING_URI", "", "MLflow",
        "Where runs and models go: an MLflow server (`http://host:5000`), `databricks`, an Azure ML workspace's "
        "`azureml://` URI. MLflow's own variables (`MLFLOW_TRACKING_TOKEN`, `DATABRICKS_HOST`, ...) carry its "
        "credentials.", "unset: the embedded store, `$AERIAL_DATA_ROOT/mlflow`")
    mlflow_experiment: str = _field(
        "AERIAL_MLFLOW_EXPERIMENT", "", "MLflow",
        "The experiment of the classifier runs (Databricks wants a workspace path, `/Users/<you>/aerial_assets`).",
        "`aerial_assets`; with a tracking server, `aerial_assets:<data root>`")
    mlflow_model_name: str = _field(
        "AERIAL_MLFLOW_MODEL_NAME", "aerial_assets_land_use", "MLflow",
        "The registered model `champion_model` adds a version to (alias `champion`); Unity Catalog wants "
        "`catalog.schema.name`.")

    # Logs and start-up
    verbose: bool = _field(
        "AERIAL_VERBOSE", False, "Logs and start-up",
        "`1` (or `make run RUN_ARGS=--verbose`): the local Spark driver logs with Spark's own settings instead of warnings and "
        "errors only.", "unset")
    jvm_archive: bool = _field(
        "AERIAL_JVM_ARCHIVE", True, "Logs and start-up",
        "`off`: the Spark driver JVM starts without the class-data-sharing archive `make install` built.",
        "on when `make install` built it")

    @field_validator("spark_parallelism", mode="before")
    @classmethod
    def _whole_number(cls, value):
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError("is not a whole number: set it to the cluster's task slots (executor cores in total), "
                             "or leave it unset to ask Spark")
        return value

    @field_validator("training_gsd_m", mode="after")
    @classmethod
    def _positive_gsd(cls, value):
        if not value >= 0 or value == float("inf"):
            raise ValueError("is not a positive number of metres per pixel (for example 0.6), or unset")
        return value

    @field_validator("deployment", "spark_storage", "spark_azure_scheme", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("featurize_engine", mode="before")
    @classmethod
    def _engine(cls, value):
        value = value.strip().lower() if isinstance(value, str) else value
        if value not in ENGINES:
            raise ValueError(f"is not one of {', '.join(ENGINES)}")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """This process's environment, or under :meth:`from_env` only the mapping given (no .env, no secrets dir)."""
        return (init_settings,) if _GIVEN_ONLY.get() else (init_settings, env_settings)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AerialSettings:
        """The settings of ``env`` (variables set to blanks count as unset), or a :class:`ConfigurationError` naming
        the first bad variable and its value (never a secret's)."""
        names = {info.validation_alias for info in cls.model_fields.values()}
        values = {name: value for name, value in env.items() if name in names and str(value).strip()}
        token = _GIVEN_ONLY.set(True)
        try:
            return cls(**values)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = error["loc"][0]
            shown = "<secret>" if isinstance(cls.model_fields[_field_name(name)].default, SecretStr) \
                else repr(values.get(name))
            message = "is not a yes/no value: use 1 or 0 (true/false, on/off)" if error["type"] == "bool_parsing" \
                else error["msg"].removeprefix("Value error, ")
            raise ConfigurationError(f"{name}={shown} {message}") from None
        finally:
            _GIVEN_ONLY.reset(token)

    @property
    def spark_token_set(self) -> bool:
        return bool(self.spark_token.get_secret_value())


def _field_name(env: str) -> str:
    return next(name for name, info in AerialSettings.model_fields.items() if info.validation_alias == env)


def settings_fields() -> list[tuple[str, str, str, str]]:
    """``(variable, default as documented, section, meaning)`` of every setting, in declaration order: what the
    settings reference and README's table are generated from."""
    rows = []
    for info in AerialSettings.model_fields.values():
        extra = info.json_schema_extra
        default = extra["default_doc"] or (f"`{info.default}`" if info.default not in (None, "") else "unset")
        rows.append((extra["env"], default, extra["section"], info.description))
    return rows
