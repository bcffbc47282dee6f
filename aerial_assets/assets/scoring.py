"""Group ``scoring``: counties cut into tiles, and every tile scored by the champion model."""


import time

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from aerial_assets.assets._io import read_json, write_json
from aerial_assets.assets.features import FeaturizeConfig
from aerial_assets.errors import CountyError
from aerial_assets.featurization import chunked_write
from aerial_assets.partitions import county_partitions
from aerial_assets.progress import Progress
from aerial_assets.rasters import grid_shape, open_info
from aerial_assets.resources import CountyRegistryResource, SparkResource, StorageResource
from aerial_assets.storage import join, storage_for
from aerial_assets.tiling import PASSTHROUGH, TILE_SCHEMA, WINDOW_FEATURE_SCHEMA, tile_frames, window_featurizer
from aerial_assets.training import with_vectors


class CountyTilesConfig(Config):
    """Tiles are squares of ``tile_size_m`` metres whatever the resolution; mostly-nodata tiles are skipped."""

    tile_size_m: float = 224.0
    max_nodata_fraction: float = 0.5


@asset(
    group_name="scoring",
    partitions_def=county_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    kinds={"spark", "rasterio", "parquet"},
)
def county_tiles(
    context: AssetExecutionContext,
    config: CountyTilesConfig,
    spark: SparkResource,
    storage: StorageResource,
    counties: CountyRegistryResource,
) -> MaterializeResult:
    """A county's imagery cut into square tiles: window offsets, bounds in the raster's CRS and in
    longitude/latitude, and a status (`ok`, `nodata` for mostly-empty tiles, `quarantined` for unreadable
    windows). Only headers and decimated masks are read here; pixels are read when scoring."""
    from pyspark.sql import functions as F

    results = {}
    for key in context.partition_keys:
        county = counties.get(storage.layout, key)
        session = spark.session
        frames, infos = [], []
        for index, uri in enumerate(county.rasters):
            info = open_info(uri)
            if infos and info.crs != infos[0].crs:
                raise CountyError(f"county {key}: raster {uri} is in {info.crs}, the first one in {infos[0].crs}; "
                                  "reproject them to one CRS")
            rows, cols, tile_px = grid_shape(info, config.tile_size_m)
            if rows * cols == 0:
                raise CountyError(f"county {key}: raster {uri} ({info.width}x{info.height} px) is smaller than one "
                                  f"{config.tile_size_m} m tile; lower tile_size_m")
            infos.append(info)
            n_tasks = max(spark.task_parallelism(), (rows * cols) // 2000)
            frame = session.range(0, rows * cols, numPartitions=n_tasks).mapInPandas(
                tile_frames(info.to_dict(), index, key, config.tile_size_m, config.max_nodata_fraction), TILE_SCHEMA
            ).withColumn("scale_lo", F.lit(info.scale_lo)).withColumn("scale_hi", F.lit(info.scale_hi))
            frames.append(frame)
        tiles = frames[0]
        for other in frames[1:]:
            tiles = tiles.unionByName(other)
        out = storage.layout.county_tiles(key)
        with storage.storage.atomic_dir(out) as tmp:
            path = storage_for(tmp).spark_path(join(tmp, "tiles.parquet"))
            tiles.write.parquet(path)
            stats = {r["status"]: int(r["count"]) for r in session.read.parquet(path).groupBy("status").count().collect()}
            summary = {
                "county": key, "name": county.name, "crs": infos[0].crs, "tile_size_m": config.tile_size_m,
                "rasters": [i.to_dict() for i in infos], "counts": stats,
            }
            write_json(storage_for(tmp), tmp, "summary.json", summary)
        results[key] = summary
        context.log.info(f"county {key}: {stats}")
    summary = results[context.partition_keys[0]]
    stats = summary["counts"]
    return MaterializeResult(
        metadata={
            "tiles": MetadataValue.path(join(storage.layout.county_tiles(summary["county"]), "tiles.parquet")),
            "dagster/row_count": int(sum(stats.values())),
            "n_ok": stats.get("ok", 0),
            "n_nodata_skipped": stats.get("nodata", 0),
            "n_quarantined": stats.get("quarantined", 0),
            "crs": summary["crs"],
            "rasters": len(summary["rasters"]),
            "tile_size_m": config.tile_size_m,
            "counties_in_run": ", ".join(context.partition_keys),
        }
    )


class ScoringConfig(FeaturizeConfig):
    """Throughput knobs for scoring: as for featurization, with larger chunks between progress reports."""

    chunk_tiles: int = 4000


@asset(
    group_name="scoring",
    partitions_def=county_partitions,
    deps=["county_tiles", "champion_model"],
    backfill_policy=BackfillPolicy.single_run(),
    kinds={"spark", "onnx", "parquet"},
)
def county_predictions(
    context: AssetExecutionContext, config: ScoringConfig, spark: SparkResource, storage: StorageResource
) -> MaterializeResult:
    """Every usable tile of a county scored by the champion: tile id, bounds, centroid lon/lat, predicted
    label, the probability of every class, and the id of the model that made the prediction."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    layout, store = storage.layout, storage.storage
    champion = read_json(store, layout.champion(), "champion.json")
    classes, model_id = champion["classes"], champion["model_id"]
    model = PipelineModel.read().session(spark.session).load(store.spark_path(join(layout.champion(), "pipeline_model")))
    model_uri = join(layout.champion(), "model.onnx")
    session = spark.session
    featurize = window_featurizer(model_uri, config.threads_per_task, config.batch_size)
    label_of = F.array(*[F.lit(c) for c in classes])
    last = {}
    for key in context.partition_keys:
        tiles_path = store.spark_path(join(layout.county_tiles(key), "tiles.parquet"))
        tiles = session.read.parquet(tiles_path).filter("status = 'ok'")
        n_tiles = tiles.count()

        def score(part):
            feats = part.mapInPandas(featurize, WINDOW_FEATURE_SCHEMA)
            ok = with_vectors(feats.filter("status = 'ok'"))
            scored = model.transform(ok).withColumn("p", vector_to_array("probability"))
            cols = [F.element_at(label_of, F.col("prediction").cast("int") + 1).alias("predicted_label"),
                    F.col("prediction").cast("int").alias("predicted_index")]
            cols += [F.col("p")[i].alias(f"prob_{c}") for i, c in enumerate(classes)]
            return scored.select(*PASSTHROUGH, *cols).withColumn("model_id", F.lit(model_id))

        progress = Progress(n_tiles, f"scoring {key} with {model_id}", context.log.info)
        out = layout.county_predictions(key)
        started = time.monotonic()
        with store.atomic_dir(out) as tmp:
            path = storage_for(tmp).spark_path(join(tmp, "predictions.parquet"))
            chunked_write(tiles, score, path, spark.task_parallelism(), config.chunk_tiles, progress)
            written = session.read.parquet(path)
            counts = {r["predicted_label"]: int(r["count"]) for r in written.groupBy("predicted_label").count().collect()}
            n_scored = int(sum(counts.values()))
            if n_scored != n_tiles:
                raise CountyError(f"county {key}: scored {n_scored} of {n_tiles} tiles; unreadable windows are "
                                  "listed in the run log")
            tile_summary = read_json(store, layout.county_tiles(key), "summary.json")
            summary = {"county": key, "model_id": model_id, "classes": classes, "counts": counts,
                       "crs": tile_summary["crs"], "n_tiles": n_scored, "seconds": time.monotonic() - started}
            write_json(storage_for(tmp), tmp, "summary.json", summary)
        last = summary
    return MaterializeResult(
        metadata={
            "model_id": model_id,
            "predictions": MetadataValue.path(join(layout.county_predictions(last["county"]), "predictions.parquet")),
            "dagster/row_count": last["n_tiles"],
            "tiles_per_second": round(last["n_tiles"] / max(last["seconds"], 1e-9), 1),
            "counts_per_class": MetadataValue.json(last["counts"]),
            "counties_in_run": ", ".join(context.partition_keys),
        }
    )
