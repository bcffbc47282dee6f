"""Jobs, the re-scoring schedule and the county registry sensor."""

import hashlib

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    define_asset_job,
    schedule,
    sensor,
)

from aerial_assets.defs.partitions import county_partitions
from aerial_assets.defs.resources import CountyRegistryResource, StorageResource
from aerial_assets.imagery.counties import parse_registry

county_job = define_asset_job(
    "county_job",
    selection=AssetSelection.assets("county_tiles", "county_predictions", "county_land_use_map"),
    partitions_def=county_partitions,
    description="Tile, score and map one county (a backfill runs it for many).",
)

rescore_job = define_asset_job(
    "rescore_county_job",
    selection=AssetSelection.assets("county_predictions", "county_land_use_map"),
    partitions_def=county_partitions,
    description="Re-score a county with the current champion and redraw its map.",
)


@schedule(job=rescore_job, cron_schedule="0 3 * * *", default_status=DefaultScheduleStatus.STOPPED)
def rescore_counties_schedule(context: ScheduleEvaluationContext):
    """Daily (stopped by default): re-score every registered county with the current champion."""
    keys = context.instance.get_dynamic_partitions(county_partitions.name)
    return [RunRequest(run_key=f"{key}-{context.scheduled_execution_time:%Y%m%d}", partition_key=key) for key in keys]


@sensor(job=county_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED)
def county_registry_sensor(context: SensorEvaluationContext, storage: StorageResource,
                           counties: CountyRegistryResource) -> SensorResult:
    """Adds a partition for every county newly declared in the registry and launches its first run.

    The registry is parsed only when its text changed since the last evaluation (its sha256 is the sensor's
    cursor): the sensor runs every minute, and a large registry costs seconds to parse."""
    uri, text = counties.registry_text(storage)
    digest = hashlib.sha256((text or "").encode()).hexdigest()
    if text is not None and context.cursor == digest:
        return SensorResult(skip_reason=f"county registry {uri} unchanged")
    registered = set(context.instance.get_dynamic_partitions(county_partitions.name))
    found = parse_registry(text, uri) if text is not None else counties.load(storage)
    new = sorted(set(found) - registered)
    return SensorResult(
        run_requests=[RunRequest(run_key=f"register-{key}", partition_key=key) for key in new],
        dynamic_partitions_requests=[county_partitions.build_add_request(new)] if new else [],
        cursor=digest,
    )
