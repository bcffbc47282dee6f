"""Group ``maps``: the predicted land use of a county as a GeoTIFF and a PNG."""


import os
import tempfile

import numpy as np
from dagster import AssetExecutionContext, BackfillPolicy, MaterializeResult, MetadataValue, asset

from aerial_assets.assets._io import markdown_table, read_json, write_json
from aerial_assets.partitions import county_partitions
from aerial_assets.rasters import map_grid, write_class_geotiff
from aerial_assets.rendering import class_colours, hex_to_rgb, map_png, markdown_image
from aerial_assets.resources import SparkResource, StorageResource
from aerial_assets.storage import join, storage_for

NODATA = 255


@asset(
    group_name="maps",
    partitions_def=county_partitions,
    deps=["county_predictions"],
    backfill_policy=BackfillPolicy.single_run(),
    kinds={"geotiff", "png"},
)
def county_land_use_map(
    context: AssetExecutionContext, spark: SparkResource, storage: StorageResource
) -> MaterializeResult:
    """A county's predicted land use: a single-band GeoTIFF of class ids (one pixel per tile, in the county's
    CRS, with a colour table) and a PNG map with legend, title and scale bar; class shares in metadata."""
    import pandas as pd

    layout, store = storage.layout, storage.storage
    meta: dict[str, object] = {}
    for key in context.partition_keys:
        summary = read_json(store, layout.county_predictions(key), "summary.json")
        classes, model_id = summary["classes"], summary["model_id"]
        path = store.spark_path(join(layout.county_predictions(key), "predictions.parquet"))
        # One small row per tile (its corner and class): this is the map itself.
        cells = spark.session.read.parquet(path).select("left", "right", "bottom", "top", "predicted_index").toPandas()
        grid_def = map_grid(cells["left"], cells["right"], cells["bottom"], cells["top"])
        grid = np.full((grid_def.rows, grid_def.cols), NODATA, np.uint8)
        rows, cols = grid_def.cells(cells["left"], cells["top"])
        grid[rows, cols] = cells["predicted_index"].to_numpy().astype(np.uint8)
        colours = class_colours(classes)
        title = f"Predicted land use: {key} (model {model_id})"
        png = map_png(grid, classes, title, grid_def.cell, grid_def.extent, summary["crs"], NODATA)
        counts = np.bincount(grid[grid != NODATA].ravel(), minlength=len(classes))
        shares = pd.DataFrame({"class": classes, "tiles": counts.astype(int),
                               "share_%": np.round(100 * counts / max(counts.sum(), 1), 1)})
        out = layout.county_map(key)
        with store.atomic_dir(out) as tmp:
            tmp_store = storage_for(tmp)
            with tempfile.TemporaryDirectory() as scratch:
                tif = os.path.join(scratch, "land_use.tif")
                write_class_geotiff(tif, grid, grid_def, summary["crs"], [hex_to_rgb(c) for c in colours], NODATA)
                with open(tif, "rb") as handle:
                    tmp_store.write_bytes(join(tmp, "land_use.tif"), handle.read())
            tmp_store.write_bytes(join(tmp, "land_use.png"), png)
            write_json(tmp_store, tmp, "summary.json", {
                "county": key, "model_id": model_id, "crs": summary["crs"], "classes": classes,
                "grid": [grid_def.rows, grid_def.cols], "cell_m": grid_def.cell, "counts": counts.tolist(),
            })
        context.log.info(f"map of {key}: {join(out, 'land_use.png')}")
        meta = {
            "map_png": MetadataValue.path(join(out, "land_use.png")),
            "map_geotiff": MetadataValue.path(join(out, "land_use.tif")),
            "map": MetadataValue.md(markdown_image(png, f"land use map of {key}")),
            "class_shares": MetadataValue.md(markdown_table(shares, ".1f")),
            "model_id": model_id,
            "crs": summary["crs"],
            "grid_rows": grid_def.rows,
            "grid_cols": grid_def.cols,
            "counties_in_run": ", ".join(context.partition_keys),
        }
    return MaterializeResult(metadata=meta)
