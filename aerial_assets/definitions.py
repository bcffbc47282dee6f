"""The code location: assets, checks, jobs, schedule, sensor and the resources of the current deployment.

:func:`build_resources` is the only place that reads the environment, and it runs when the code
location loads (``@definitions``), never at import time.
"""


import os
from collections.abc import Mapping

from dagster import (
    Definitions,
    definitions,
    in_process_executor,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from aerial_assets.assets import backbones, features, maps, scoring, tiles, training
from aerial_assets.automation import county_job, county_registry_sensor, rescore_counties_schedule, rescore_job
from aerial_assets.resources import CountyRegistryResource, SparkResource, StorageResource, TrainingTilesResource

ASSET_MODULES = [tiles, backbones, features, training, scoring, maps]


def build_resources(env: Mapping[str, str]) -> dict[str, object]:
    """Resources for the deployment described by ``env`` (same keys in every deployment)."""
    return {
        "spark": SparkResource(master=env.get("AERIAL_SPARK_MASTER", "local[2]"), remote=env.get("SPARK_REMOTE", "")),
        "storage": StorageResource(data_root=env.get("AERIAL_DATA_ROOT", ".aerial_data")),
        "training_tiles": TrainingTilesResource(uri=env.get("AERIAL_TRAINING_TILES", "")),
        "counties": CountyRegistryResource(uri=env.get("AERIAL_COUNTIES", "")),
    }


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
