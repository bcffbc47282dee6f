"""Group ``scoring``: counties cut into tiles, and every tile scored by the champion model."""

import json
import time
from dataclasses import dataclass

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetDep,
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from aerial_assets.defs.assets._io import declared_columns, run_per_county, spark_table_schema
from aerial_assets.defs.assets.features import FeaturizeConfig
from aerial_assets.defs.partitions import county_partitions, every_partition, same_partition
from aerial_assets.defs.resources import CountyRegistryResource, SparkResource, StorageResource
from aerial_assets.errors import ConfigurationError, CountyError
from aerial_assets.imagery.counties import County
from aerial_assets.imagery.rasters import RasterInfo, band_note, grid_shape, lonlat_bounds, open_info
from aerial_assets.imagery.tile_summaries import parse_tile_summary
from aerial_assets.imagery.tiling import TILE_SCHEMA, file_tile_rows, locate_tile_files, tile_frames
from aerial_assets.maps.geoparquet import PART_SCHEMA, part_writer, write_empty
from aerial_assets.maps.prediction_checks import PROBABILITY_TOLERANCE, PredictionsReport, inspect_predictions
from aerial_assets.maps.stac import geoparquet_item, lonlat_bbox, write_item
from aerial_assets.maps.trust import imagery_trust, likely_causes, stac_properties, trust_warning
from aerial_assets.records import (
    BackboneRecord,
    ChampionRecord,
    ClassifierRecord,
    CountyTilesSummary,
    OodRecord,
    PredictionsSummary,
    view_choice,
)
from aerial_assets.safety import csv_files
from aerial_assets.spark import synapseml_featurization
from aerial_assets.spark.featurization import WINDOW_FEATURE_SCHEMA, window_featurizer
from aerial_assets.spark.jobs import JobProgress, task_count
from aerial_assets.spark.part_files import executor_folder, keep_reported
from aerial_assets.spark.synapseml import ONNX_MODEL_CLASS, require
from aerial_assets.storage.core import is_local, join
from aerial_assets.storage.layout import MODEL, NOVELTY, PIPELINE, PREDICTIONS, QUARANTINE, TILES
from aerial_assets.storage.manifest import verify, write_manifest
from aerial_assets.tables import PASSTHROUGH, TileStatus
from aerial_assets.tables import TILES as TILES_TABLE
from aerial_assets.training.classifiers import load_pipeline, with_vectors
from aerial_assets.training.novelty import NoveltyModel, novelty_scorer


class CountyTilesConfig(Config):
    """Tiles are squares of ``tile_size_m`` metres whatever the resolution; mostly-nodata tiles are skipped."""

    tile_size_m: float = 224.0
    max_nodata_fraction: float = 0.5
    follow_external_links: bool = Field(default=False, description="ready-made tile folders: score files whose "
                                        "symlinks lead out of the folder (quarantined by default)")


def _check_overlap(county: County, info: RasterInfo) -> None:
    if county.bounds is None:
        return
    west, south, east, north = lonlat_bounds(info)
    cw, cs, ce, cn = county.bounds
    if west >= ce or east <= cw or south >= cn or north <= cs:
        raise CountyError(
            f"county {county.key}: raster {info.uri} covers lon {west:.3f}..{east:.3f}, lat {south:.3f}..{north:.3f}, "
            f"outside the county's declared bounds {list(county.bounds)}: check the raster or the bounds"
        )


def _raster_tiles(spark: SparkResource, county: County, config: CountyTilesConfig):
    from pyspark.sql import functions as F

    frames, infos = [], []
    for index, uri in enumerate(county.rasters):
        info = open_info(uri)
        if infos and info.crs != infos[0].crs:
            raise CountyError(f"county {county.key}: raster {uri} is in {info.crs}, the first one in {infos[0].crs}; "
                              "reproject them to one CRS")
        _check_overlap(county, info)
        rows, cols, _ = grid_shape(info, config.tile_size_m)
        if rows * cols == 0:
            raise CountyError(f"county {county.key}: raster {uri} ({info.width}x{info.height} px) is smaller than one "
                              f"{config.tile_size_m} m tile; lower tile_size_m")
        infos.append(info)
        n_tasks = task_count(rows * cols, spark.task_parallelism(), 2000)  # masks only: cheap tiles
        frames.append(spark.session.range(0, rows * cols, numPartitions=n_tasks).mapInPandas(
            tile_frames(info.to_dict(), index, county.key, config.tile_size_m, config.max_nodata_fraction), TILE_SCHEMA
        ).withColumn("scale_lo", F.lit(info.scale_lo)).withColumn("scale_hi", F.lit(info.scale_hi)))
    tiles = frames[0]
    for other in frames[1:]:
        tiles = tiles.unionByName(other)
    return tiles, infos[0].crs, [{**i.to_dict(), **({"band_note": n} if (n := band_note(i.count)) else {})}
                                 for i in infos]


def _folder_tiles(spark: SparkResource, storage: StorageResource, county: County, config: CountyTilesConfig):
    from pyspark.sql import functions as F

    source = county.tiles
    summary = parse_tile_summary(storage.for_uri(source.summary).read_text(source.summary), source.summary, crs=source.crs)
    listed = None if is_local(source.folder) else {
        e.relative_path for e in storage.for_uri(source.folder).list_files(source.folder)}
    uris, reasons = locate_tile_files(summary["filename"].tolist(), source.folder, listed,
                                      config.follow_external_links)
    rows = file_tile_rows(summary, source.folder, county.key, source.crs, uris, reasons)
    tiles = spark.session.createDataFrame(rows, TILE_SCHEMA)
    tiles = tiles.withColumn("scale_lo", F.lit(0.0)).withColumn("scale_hi", F.lit(255.0))
    return tiles, source.crs, [{"folder": source.folder, "summary": source.summary}]


@asset(
    group_name="scoring",
    partitions_def=county_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    kinds={"spark", "rasterio", "parquet"},
    metadata={"dagster/column_schema": declared_columns(TILES_TABLE.fields)},
)
def county_tiles(
    context: AssetExecutionContext,
    config: CountyTilesConfig,
    spark: SparkResource,
    storage: StorageResource,
    counties: CountyRegistryResource,
):
    """A county's imagery cut into square tiles: window offsets, bounds in the raster's CRS and in
    longitude/latitude, and a status (`ok`, `nodata` for mostly-empty tiles, `quarantined` for unreadable
    windows). Only headers and decimated masks are read here; pixels are read when scoring. Many counties
    run in one Spark session; one failing county does not stop the others."""

    def work(key: str) -> dict:
        county = counties.get(storage, key)
        tiles, crs, sources = _folder_tiles(spark, storage, county, config) if county.tiles else _raster_tiles(spark, county, config)
        out = storage.layout.county_tiles(key)
        with storage.storage.atomic_dir(out) as tmp:
            path = storage.storage.spark_path(join(tmp, TILES))
            tiles.write.parquet(path)
            write_manifest(storage.storage, tmp, [TILES])
            stats = {r["status"]: int(r["count"])
                     for r in spark.session.read.parquet(path).groupBy("status").count().collect()}
            CountyTilesSummary(county=key, name=county.name, area=county.area_key, year=county.year, crs=crs,
                               tile_size_m=config.tile_size_m, sources=sources, counts=stats).write(storage.storage, tmp)
        context.log.info(f"county {key}: {stats}")
        notes = [f"{s['uri']}: {s['band_note']}" for s in sources if s.get("band_note")]
        for note in notes:
            context.log.warning(f"county {key}: {note}")
        return {
            **({"band_notes": MetadataValue.md("\n".join(f"- {n}" for n in notes))} if notes else {}),
            "tiles": MetadataValue.path(join(out, TILES)),
            "dagster/row_count": int(sum(stats.values())),
            "n_ok": stats.get(TileStatus.OK, 0),
            "n_nodata_skipped": stats.get(TileStatus.NODATA, 0),
            "n_quarantined": stats.get(TileStatus.QUARANTINED, 0),
            "crs": crs,
            "year": county.year if county.year is not None else "",
            "tile_size_m": config.tile_size_m,
        }

    return run_per_county(context, work)


# What the UI's column view says of predictions.parquet (dagster/column_schema).
PREDICTION_COLUMNS = {
    "tile_id": "tile id (raster index, row, column)", "raster_index": "which raster of the county",
    "row": "tile row in its raster", "col": "tile column in its raster",
    "left": "tile bounds in the county's CRS", "bottom": "tile bounds in the county's CRS",
    "right": "tile bounds in the county's CRS", "top": "tile bounds in the county's CRS",
    "lon": "tile centre, longitude (EPSG:4326)", "lat": "tile centre, latitude (EPSG:4326)",
    "predicted_label": "the champion's class (null when quarantined)", "predicted_index": "index of that class",
    "status": "ok, or quarantined with a reason", "reason": "why the tile's pixels could not be scored",
    "model_id": "the model that made the prediction", "vintage": "the imagery's year",
    "ood_score": "Mahalanobis distance of the tile's features to the nearest training class (out-of-distribution "
                 "score)",
    "in_distribution": "false when ood_score is above the model's threshold (99th percentile of held-out training "
                       "tiles): the imagery is unlike the training tiles, and the label is not to be trusted",
    "geometry": "the tile polygon, WKB, in the county's CRS (GeoParquet primary column)",
    "bbox": "GeoParquet 1.1 covering column: the tile's xmin, ymin, xmax, ymax",
}


class ScoringConfig(FeaturizeConfig):
    """Throughput knobs as for featurization; ``model_id``: score with this model of the leaderboard instead of
    the champion (its id, or ``backbone|algorithm``; empty = the champion); ``sample_frac``: score this fraction
    of the county's tiles (a deterministic sample by tile id, as the original's batch-scoring script allowed);
    ``views``: score with fewer (or more) views than the model was trained on."""

    model_id: str = ""
    sample_frac: float = Field(default=1.0, gt=0.0, le=1.0)
    ood_score: bool = Field(default=True, description="compute each tile's out-of-distribution score in the "
                            "scoring pass (False only to measure its cost: the maps then cannot mark untrusted "
                            "tiles and the check reports the share as unknown)")
    views: view_choice("the model's") = Field(default=0, description="rotated/flipped views per county tile: 0 (default) = as many as the "
                       "model was trained on; 1, 4 or 8 to trade accuracy for speed (each view is one inference; a "
                       "model trained with augmentation has seen single views, so 1 view is a valid, faster choice)")


@dataclass(frozen=True)
class ScoringModel:
    """What scoring needs of a model: where its graph and classifier are, its classes and views."""

    model_id: str
    onnx_uri: str
    pipeline_uri: str
    classes: list[str]
    feature_dim: int
    views: int
    algorithm: str
    input_size: int = 224
    novelty_uri: str | None = None  # the out-of-distribution model; None: the model predates it
    ood: OodRecord | None = None


def scoring_model(storage: StorageResource, wanted: str) -> ScoringModel:
    """The champion (``wanted`` empty), or the stored classifier whose model id (or ``backbone|algorithm``) is
    ``wanted``: it must be on the current leaderboard and still be the model stored for its partition."""
    layout, store = storage.layout, storage.storage
    if not wanted:
        for name in (PIPELINE, MODEL):  # the bundle as champion_model wrote it, or one line saying what to redo
            verify(store, layout.champion(), name, "champion_model")
        champion = ChampionRecord.read(store, layout.champion())
        if champion.ood is not None:
            verify(store, layout.champion(), NOVELTY, "champion_model")
        return ScoringModel(champion.model_id, layout.champion_onnx(),
                            layout.champion_pipeline(), champion.classes,
                            champion.backbone_record.feature_dim, champion.views, champion.algorithm,
                            champion.backbone_record.input_size,
                            join(layout.champion(), NOVELTY) if champion.ood is not None else None, champion.ood)
    board = csv_files.read_csv(store.read_text(layout.leaderboard_csv()))
    hit = board[(board["model_id"] == wanted) | (board["backbone"] + "|" + board["algorithm"] == wanted)]
    if hit.empty:
        known = ", ".join(f"{r.model_id} ({r.backbone}|{r.algorithm})" for r in board.itertuples())
        raise ConfigurationError(f"model_id {wanted!r} is not on the leaderboard; models: {known}")
    backbone, algorithm = str(hit["backbone"].iloc[0]), str(hit["algorithm"].iloc[0])
    folder = layout.classifier(backbone, algorithm)
    info = ClassifierRecord.read(store, folder)
    if info.model_id != hit["model_id"].iloc[0]:
        raise ConfigurationError(f"model {hit['model_id'].iloc[0]} ({backbone}|{algorithm}) is no longer stored: "
                                 f"that partition now holds {info.model_id}; re-materialize the leaderboard")
    verify(store, folder, PIPELINE, f"land_use_classifiers[{backbone}|{algorithm}]")
    if info.ood is not None:
        verify(store, folder, NOVELTY, f"land_use_classifiers[{backbone}|{algorithm}]")
    record = BackboneRecord.read(store, layout.backbone_model(backbone))
    return ScoringModel(info.model_id, layout.backbone_onnx(backbone),
                        layout.classifier_pipeline(backbone, algorithm), info.classes, record.feature_dim, info.views,
                        algorithm, record.input_size, join(folder, NOVELTY) if info.ood is not None else None, info.ood)


@asset(
    group_name="scoring",
    partitions_def=county_partitions,
    # the champion's bundle by default; with config model_id, a leaderboard row's classifier and backbone graph
    deps=[AssetDep("county_tiles", partition_mapping=same_partition), "champion_model", "model_leaderboard",
          AssetDep("land_use_classifiers", partition_mapping=every_partition),
          AssetDep("backbone_models", partition_mapping=every_partition)],
    backfill_policy=BackfillPolicy.single_run(),
    kinds={"spark", "onnx", "geoparquet"},
)
def county_predictions(
    context: AssetExecutionContext, config: ScoringConfig, spark: SparkResource, storage: StorageResource
):
    """Every usable tile of a county scored by the champion, as GeoParquet (tile polygons in the county's CRS):
    tile id, bounds, centroid lon/lat, predicted label, the probability of every class, the id of the model
    that made the prediction and the vintage. Tiles whose pixels cannot be read are kept with their reason."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema

    layout, store = storage.layout, storage.storage
    jvm_engine = spark.featurize_engine == synapseml_featurization.ENGINE
    if jvm_engine:  # before any work: one line saying why, where the session lacks SynapseML
        require(spark.session, "AERIAL_FEATURIZE_ENGINE=synapseml", ONNX_MODEL_CLASS)
    chosen = scoring_model(storage, config.model_id.strip())
    classes, model_id, dim = chosen.classes, chosen.model_id, chosen.feature_dim
    session = spark.session
    model = load_pipeline(session, store.spark_path(chosen.pipeline_uri), chosen.algorithm)
    views = config.views or chosen.views  # default: the views the model was trained on
    if jvm_engine:
        graph = store.read_bytes(chosen.onnx_uri)

        def featurize(part):
            return synapseml_featurization.window_features(part, graph, config.batch_size, views)
    else:
        featurizer = window_featurizer(chosen.onnx_uri, config.threads_per_task, config.batch_size, views)

        def featurize(part):
            return part.mapInPandas(featurizer, WINDOW_FEATURE_SCHEMA)
    label_of = F.array(*[F.lit(c) for c in classes])
    novelty = (NoveltyModel.from_bytes(store.read_bytes(chosen.novelty_uri))
               if chosen.novelty_uri and config.ood_score else None)
    if not config.ood_score:
        context.log.warning("ood_score=False: no out-of-distribution scores (the maps cannot mark untrusted tiles)")
    elif novelty is None:
        context.log.warning(f"{model_id} was trained before out-of-distribution scores existed: its predictions "
                            "carry none; re-materialize land_use_classifiers to get them")
    ood_scorer = novelty_scorer(novelty) if novelty is not None else None

    def score(part, year: int | None):
        feats = featurize(part)
        ok = F.col("status") == TileStatus.OK.value
        # Unreadable tiles get a zero vector so that one pass scores everything; their outputs are nulled.
        feats = feats.withColumn("features", F.when(ok, F.col("features")).otherwise(
            F.array_repeat(F.lit(0.0).cast("float"), dim)))
        # the out-of-distribution score in the same pass, from the same features (no second read of any tile)
        feats = feats.withColumn("ood", ood_scorer(F.col("features")) if ood_scorer is not None
                                 else F.lit(None).cast("double"))
        scored = model.transform(with_vectors(feats)).withColumn("p", vector_to_array("probability"))
        cols = [F.when(ok, F.element_at(label_of, F.col("prediction").cast("int") + 1)).alias("predicted_label"),
                F.when(ok, F.col("prediction").cast("int")).alias("predicted_index")]
        cols += [F.when(ok, F.col("p")[i]).alias(f"prob_{c}") for i, c in enumerate(classes)]
        threshold = novelty.threshold if novelty is not None else None
        cols += [F.when(ok, F.col("ood")).alias("ood_score"),
                 F.when(ok & F.col("ood").isNotNull(), F.col("ood") <= F.lit(threshold)).alias("in_distribution")]
        return scored.select(*PASSTHROUGH, *cols, "status", "reason").withColumn(
            "model_id", F.lit(model_id)).withColumn("vintage", F.lit(year).cast("int"))

    def work(key: str) -> dict:
        tile_summary = CountyTilesSummary.read(store, layout.county_tiles(key))
        verify(store, layout.county_tiles(key), TILES, f"county_tiles[{key}]")
        tiles = session.read.parquet(store.spark_path(layout.tiles_parquet(key)))
        tiles = tiles.filter(F.col("status") == TileStatus.OK.value)
        n_tiles = tile_summary.count(TileStatus.OK)  # counted by county_tiles: no job here
        if config.sample_frac < 1.0:  # by a hash of the tile id: the same sample on any cluster, any run
            tiles = tiles.filter((F.abs(F.xxhash64("tile_id")) % 1_000_000) < int(config.sample_frac * 1_000_000))
            n_tiles = int(round(n_tiles * config.sample_frac))  # the expected count, for the job's width
        n_tasks = task_count(n_tiles, spark.task_parallelism(), config.tiles_per_task)
        # window sizes in pixels, per raster (header data: no pixel is read): how much each tile is resampled
        sizes = [(int(r["raster_index"]), int(r["width_px"]), int(r["count"])) for r in
                 tiles.groupBy("raster_index", "width_px").count().collect()]
        out = layout.county_predictions(key)
        started = time.monotonic()
        with store.atomic_dir(out) as tmp:
            folder = executor_folder(storage.storage, join(tmp, PREDICTIONS))
            scored = score(tiles.repartition(n_tasks), tile_summary.year)
            arrow_schema = to_arrow_schema(scored.schema)
            # One job: read windows, featurize, classify and write GeoParquet, all on the executors.
            with JobProgress(session, n_tiles, f"scoring {key} with {model_id}", context.log.info,
                             tasks=n_tasks) as progress:
                parts = scored.mapInPandas(part_writer(folder, tile_summary.crs, arrow_schema),
                                           PART_SCHEMA).collect()
            stray = keep_reported(folder, parts, lambda: write_empty(folder, tile_summary.crs, arrow_schema))
            if stray:
                context.log.warning(f"{key}: removed {len(stray)} part file(s) of failed task attempts")
            counts: dict[str, int] = {}
            for part in parts:
                for label, count in json.loads(part["counts"]).items():
                    counts[label] = counts.get(label, 0) + int(count)
            n_rows, n_ok = sum(int(p["rows"]) for p in parts), sum(int(p["n_ok"]) for p in parts)
            written = session.read.parquet(store.spark_path(join(tmp, PREDICTIONS)))
            bad = (written.filter(F.col("status") != TileStatus.OK.value).select("tile_id", "reason").toPandas()
                   if n_rows > n_ok else pd.DataFrame({"tile_id": [], "reason": []}))
            n_out = (int(written.filter(F.col("in_distribution") == F.lit(False)).count())
                     if novelty is not None else None)
            storage.storage.write_text(join(tmp, QUARANTINE), csv_files.to_csv(bad))
            write_manifest(storage.storage, tmp, [PREDICTIONS])
            seconds = time.monotonic() - started
            summary = PredictionsSummary(
                county=key, model_id=model_id, classes=classes, counts=counts, views=views, crs=tile_summary.crs,
                year=tile_summary.year, area=tile_summary.area, n_tiles=int(sum(counts.values())),
                n_quarantined=len(bad), seconds=seconds, spark_tasks=n_tasks, sample_frac=config.sample_frac,
                champion=not config.model_id.strip(), run_id=context.run_id, engine=spark.featurize_engine,
                trust=imagery_trust(sizes, tile_summary, chosen.input_size, n_out,
                                    novelty.threshold if novelty is not None else None, chosen.ood))
            summary.write(storage.storage, tmp)
            boxes = [p for p in parts if p["file"]]
            native = ([min(p["min_x"] for p in boxes), min(p["min_y"] for p in boxes),
                       max(p["max_x"] for p in boxes), max(p["max_y"] for p in boxes)] if boxes else None)
            crs = tile_summary.crs
            write_item(geoparquet_item(join(tmp, PREDICTIONS), f"{key}-predictions",
                                       lonlat_bbox(native, crs) if native else None, crs, tile_summary.year,
                                       {"aerial:county": key, "aerial:model_id": model_id,
                                        **stac_properties(summary.trust, summary.n_tiles)},
                                       schema=arrow_schema, row_count=n_rows, native_bbox=native),
                       join(tmp, "predictions.stac.json"))
        context.log.info(f"{key}: scored {n_tiles} tiles in {n_tasks} Spark tasks, {seconds:.1f} s")
        from pyspark.sql.types import BinaryType, DoubleType, StructField, StructType

        written = StructType([*scored.schema.fields, StructField("geometry", BinaryType()),
                              StructField("bbox", StructType([StructField(f, DoubleType()) for f in
                                                              ("xmin", "ymin", "xmax", "ymax")]))])
        return {
            "dagster/column_schema": spark_table_schema(written, {**PREDICTION_COLUMNS, **{
                f"prob_{c}": f"probability of {c}" for c in classes}}),
            "model_id": model_id,
            "predictions": MetadataValue.path(join(out, PREDICTIONS)),
            "stac_item": MetadataValue.path(join(out, "predictions.stac.json")),
            "dagster/row_count": summary.n_tiles,
            "n_quarantined": len(bad),
            "spark_tasks": n_tasks,
            # read, featurize, classify, out-of-distribution score, write: one Spark job (classic sessions count it)
            **({"scoring_spark_jobs": len(progress.job_ids)} if progress.job_ids else {}),
            "engine": spark.featurize_engine,
            "tiles_per_second": round(n_tiles / max(seconds, 1e-9), 1),
            "counts_per_class": MetadataValue.json(counts),
            **_trust_metadata(summary),
            "crs": tile_summary.crs,
        }

    return run_per_county(context, work)


class QuarantineShareConfig(Config):
    """``max_share``: the largest share of a county's tiles that may be quarantined (unreadable pixels)."""

    max_share: float = Field(default=0.05, ge=0.0, le=1.0)


def _reports(context, storage: StorageResource) -> dict[str, tuple[PredictionsSummary, PredictionsReport]]:
    out = {}
    for key in context.partition_keys:
        folder = storage.layout.county_predictions(key)
        summary = PredictionsSummary.read(storage.storage, folder)
        out[key] = summary, inspect_predictions(storage.layout.predictions(key), summary.crs, storage.storage)
    return out


@asset_check(asset=county_predictions, partitions_def=county_partitions,
             description="Every scored tile's class probabilities sum to 1 (within 1e-4).")
def county_predictions_probabilities(context, storage: StorageResource) -> AssetCheckResult:
    """Maps and change tables use the probabilities; a classifier or a writer that loses or rescales a column
    would pass every other test. Read from the written files, part by part."""
    reports = _reports(context, storage)
    worst = {k: r.max_probability_error for k, (_, r) in reports.items()}
    bad = {k: e for k, e in worst.items() if not e <= PROBABILITY_TOLERANCE}
    return AssetCheckResult(
        passed=not bad,
        description=("class probabilities sum to 1 for every scored tile" if not bad else
                     "; ".join(f"{k}: a tile's probabilities sum to 1 +- {e:.3g} ({reports[k][1].worst_tile})"
                               for k, e in bad.items())),
        metadata={"max_abs_error": max(worst.values(), default=0.0), "tolerance": PROBABILITY_TOLERANCE,
                  "tiles_checked": sum(r.scored for _, r in reports.values())},
    )


@asset_check(asset=county_predictions, partitions_def=county_partitions,
             description="Warns when more than a configured share of the county's tiles were quarantined.")
def county_predictions_quarantine_share(context, config: QuarantineShareConfig, storage: StorageResource
                                        ) -> AssetCheckResult:
    """A few unreadable windows are normal; many mean broken imagery (or credentials an executor lacks), and
    the map would show holes that look like data. Warns, with the share."""
    reports = _reports(context, storage)
    shares = {k: r.quarantine_share for k, (_, r) in reports.items()}
    over = {k: v for k, v in shares.items() if v > config.max_share}
    return AssetCheckResult(
        passed=not over,
        severity=AssetCheckSeverity.WARN,
        description=("quarantined share within the limit" if not over else
                     "; ".join(f"{k}: {100 * v:.1f} % of tiles quarantined (limit {100 * config.max_share:g} %): "
                               "see quarantine.csv" for k, v in over.items())),
        metadata={"quarantine_share": max(shares.values(), default=0.0), "max_share": config.max_share,
                  "n_quarantined": sum(r.quarantined for _, r in reports.values())},
    )


@asset_check(asset=county_predictions, partitions_def=county_partitions,
             description="Every prediction part reads back as GeoParquet (WKB geometry, 'geo' metadata) in the "
                         "county's CRS.")
def county_predictions_geoparquet(context, storage: StorageResource) -> AssetCheckResult:
    """GIS tools (GeoPandas, QGIS, DuckDB) find the geometry and its CRS only through the ``geo`` metadata
    of each file: a part without it, or in another CRS, would be misplaced or unreadable there."""
    reports = _reports(context, storage)
    problems = [p for _, r in reports.values() for p in r.geo_problems]
    return AssetCheckResult(
        passed=not problems,
        description="every part is GeoParquet in the county's CRS" if not problems else "; ".join(problems[:5]),
        metadata={"parts": sum(r.parts for _, r in reports.values()), "n_problems": len(problems),
                  "crs": ", ".join(sorted({s.crs for s, _ in reports.values()}))},
    )


def _trust_metadata(summary: PredictionsSummary) -> dict[str, object]:
    """The county's out-of-distribution figures as materialization metadata (plotted across runs in the UI)."""
    trust = summary.trust
    share, upsampled = trust.ood_share(summary.n_tiles), trust.upsampled_share()
    return {
        "ood_share": round(share, 4) if share is not None else "unknown: no out-of-distribution scores",
        **({} if trust.n_out_of_distribution is None else {"n_out_of_distribution": trust.n_out_of_distribution}),
        "gsd_m": trust.county_gsd_m if trust.county_gsd_m is not None else "unknown",
        "training_gsd_m": trust.training_gsd_m if trust.training_gsd_m is not None else "unknown",
        "upsampled_share": round(upsampled, 4) if upsampled is not None else "unknown",
    }


class InDistributionConfig(Config):
    """``max_share``: the largest share of a county's tiles that may be out of distribution before the check
    warns (the map is still made; its out-of-distribution tiles are marked)."""

    max_share: float = Field(default=0.10, ge=0.0, le=1.0)


@asset_check(asset=county_predictions, partitions_def=county_partitions,
             description="Warns when more than a configured share (default 10 %) of the county's tiles are out of "
                         "distribution, naming the causes it can measure (resolution, upsampling).")
def county_predictions_in_distribution(context, config: InDistributionConfig, storage: StorageResource
                                       ) -> AssetCheckResult:
    """The most common way a land-use map misleads: a model applied to imagery unlike its training tiles
    (another resolution, another sensor). The leaderboard's accuracy says nothing about such tiles; this check
    says how many there are and what can be measured about why."""
    summaries = {k: PredictionsSummary.read(storage.storage, storage.layout.county_predictions(k))
                 for k in context.partition_keys}
    warnings = [w for k, s in summaries.items()
                if (w := trust_warning(k, s.trust, s.n_tiles, config.max_share)) is not None]
    unknown = [k for k, s in summaries.items() if s.trust.ood_share(s.n_tiles) is None]
    shares = [v for s in summaries.values() if (v := s.trust.ood_share(s.n_tiles)) is not None]
    if warnings:
        description = " | ".join(warnings)
    elif unknown:
        description = (f"{', '.join(unknown)}: no out-of-distribution scores (scored with ood_score=False, or "
                       "by a model that predates them: re-materialize land_use_classifiers, then the county)")
    else:
        description = f"out-of-distribution share within the limit ({100 * max(shares, default=0.0):.1f} %)"
    first = next(iter(summaries.values()))
    return AssetCheckResult(
        passed=not warnings and not unknown,
        severity=AssetCheckSeverity.WARN,
        description=description,
        metadata={"ood_share": max(shares, default=0.0), "max_share": config.max_share,
                  "causes": "; ".join(likely_causes(first.trust)) if len(summaries) == 1 else
                  " | ".join(f"{k}: {'; '.join(likely_causes(s.trust))}" for k, s in summaries.items())},
    )
