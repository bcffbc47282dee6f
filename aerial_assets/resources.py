"""Dagster resources. The keys (``spark``, ``storage``, ``training_tiles``, ``counties``) are the same in every
deployment; only their settings change, and :func:`aerial_assets.definitions.build_resources` is the one
place that reads the environment to choose them.
"""


import os
import re
import sys
from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from aerial_assets import demo_data
from aerial_assets.counties import County, parse_registry
from aerial_assets.errors import CountyError
from aerial_assets.layout import Layout
from aerial_assets.storage import Storage, join, local_path, scheme_of, storage_for

DEMO_COUNTY_KEY = "demo_middlesex"


class SparkResource(ConfigurableResource):
    """A Spark session: local (``master``) by default, Spark Connect when ``remote`` is set.

    The session is created lazily, on first use, and kept for the life of the process, so one
    Spark session serves every step of a run (the code location runs steps in process).
    """

    master: str = "local[2]"
    remote: str = ""
    conf: dict[str, str] = {}
    parallelism: int = 0

    _session: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._session = None

    @property
    def session(self):
        if self._session is None:
            self._session = self._create()
        return self._session

    def _create(self):
        from pyspark.sql import SparkSession

        # Python workers must run the interpreter that has this project's packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.appName("aerial_assets")
        if self.remote:
            builder = builder.remote(self.remote)
        else:
            builder = builder.master(self.master)
            defaults = {
                "spark.ui.enabled": "false",
                "spark.sql.shuffle.partitions": str(max(2, 2 * self.task_parallelism())),
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.python.worker.reuse": "true",
                "spark.driver.memory": "2g",
                "spark.ui.showConsoleProgress": "false",
            }
            for key, value in {**defaults, **self.conf}.items():
                builder = builder.config(key, value)
        return builder.getOrCreate()

    def task_parallelism(self) -> int:
        """How many tasks run at once: ``parallelism`` if set, else N of ``local[N]``, else 2."""
        if self.parallelism > 0:
            return self.parallelism
        match = re.match(r"local\[(\d+)\]", self.master or "")
        if match and not self.remote:
            return int(match.group(1))
        if (self.master or "").strip() in ("local[*]",) and not self.remote:
            return os.cpu_count() or 2
        return 2


class StorageResource(ConfigurableResource):
    """Where every output lives: ``data_root`` (a local folder or a cloud URI)."""

    data_root: str = ".aerial_data"

    def root(self) -> str:
        return local_path(self.data_root) if scheme_of(self.data_root) in ("", "file") else self.data_root

    @property
    def layout(self) -> Layout:
        return Layout(self.root())

    @property
    def storage(self) -> Storage:
        return storage_for(self.root())


class TrainingTilesResource(ConfigurableResource):
    """The labelled tiles: a folder ``<class>/<image>`` (or ``train/`` + ``test/``). Empty = the demo set."""

    uri: str = ""
    demo_per_class: int = 50
    demo_size: int = 224

    def resolve(self, layout: Layout) -> tuple[str, bool]:
        """(folder URI, is_demo). The demo set is generated on first use, seeded, then reused."""
        if self.uri:
            return self.uri, False
        folder = layout.demo_training_tiles()
        path = local_path(folder)
        marker = os.path.join(path, ".complete")
        if not os.path.exists(marker):
            tmp = f"{path}.tmp-{os.getpid()}"
            storage_for(tmp).remove(tmp)
            demo_data.write_training_tiles(tmp, per_class=self.demo_per_class, size=self.demo_size, fmt="jpg")
            with open(os.path.join(tmp, ".complete"), "w") as handle:
                handle.write("seeded demo tiles\n")
            storage_for(path).remove(path)
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

    def load(self, layout: Layout) -> dict[str, County]:
        uri = self.uri or join(layout.root, "counties.yaml")
        store = storage_for(uri)
        if store.exists(uri):
            return parse_registry(store.read_text(uri), uri)
        if self.uri:
            raise CountyError(f"county registry {uri} not found: create it (see README, 'Adding a county')")
        return {DEMO_COUNTY_KEY: County(key=DEMO_COUNTY_KEY, name="Demo county (synthetic imagery)",
                                        rasters=[self.demo_raster(layout)])}

    def demo_raster(self, layout: Layout) -> str:
        path = local_path(join(layout.demo_counties(), f"{DEMO_COUNTY_KEY}.tif"))
        if not os.path.exists(path):
            demo_data.write_county_raster(path, rows=self.demo_rows, cols=self.demo_cols, tile_px=self.demo_tile_px,
                                          resolution=self.demo_resolution)
        return path

    def get(self, layout: Layout, key: str) -> County:
        counties = self.load(layout)
        if key not in counties:
            raise CountyError(
                f"county {key!r} is a partition but not in the registry ({self.uri or 'default registry'}); "
                f"registered: {', '.join(sorted(counties)) or 'none'}. Add it to the registry or delete the partition"
            )
        return counties[key]
