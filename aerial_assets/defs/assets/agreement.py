"""Group ``maps``: the agreement of a county's predicted map with a reference land-cover raster (such as NLCD),
with and without the 3 x 3 smoothing, so that the smoothing's effect is measured, not assumed."""

import numpy as np
import pandas as pd
from dagster import AssetDep, AssetExecutionContext, MetadataValue, asset

from aerial_assets.defs.assets._io import metadata_table, no_scored_tiles, run_per_county
from aerial_assets.defs.assets.maps import NODATA, _scored
from aerial_assets.defs.partitions import county_partitions, same_partition
from aerial_assets.defs.resources import CountyRegistryResource, SparkResource, StorageResource
from aerial_assets.errors import CountyError
from aerial_assets.maps.agreement import UNLABELLED, map_agreement, read_legend, reference_on_grid
from aerial_assets.maps.map_cells import grid_of, paint, with_cells
from aerial_assets.maps.rendering import confusion_png, markdown_image
from aerial_assets.maps.spatial import plurality_smooth
from aerial_assets.records import AgreementRecord, PredictionsSummary
from aerial_assets.storage.core import join

NO_REFERENCE = ("no reference raster registered: add 'reference: {raster: <land-cover GeoTIFF>, legend: "
                "<legend YAML>}' to the county's registry entry (see docs/user-guide/counties.md, reference land cover)")


@asset(
    group_name="maps",
    partitions_def=county_partitions,
    deps=[AssetDep("county_land_use_map", partition_mapping=same_partition),
          AssetDep("county_predictions", partition_mapping=same_partition)],
    kinds={"json", "png"},
)
def county_map_agreement(
    context: AssetExecutionContext, spark: SparkResource, storage: StorageResource, counties: CountyRegistryResource
):
    """Agreement of the county's predicted map with its registered reference land-cover raster (``reference:``),
    for the raw map and for its 3 x 3 plurality smoothing: overall, per class (producer's and user's accuracy,
    cells) and the confusion matrices as images, over the cells labelled in both (reference codes the legend
    leaves out, such as water, are excluded). The reference is resampled onto the map grid (see
    :mod:`aerial_assets.maps.agreement`).

    The raw map is rebuilt from the predictions exactly as ``county_land_use_map`` builds it (same grid, same
    painting), not read from ``land_use.tif``: that file is the smoothed map when the map was drawn with
    ``smoothing``, and both variants are needed whatever that setting was. This reads one small column set of
    the predictions, the cost of one map. A county without ``reference:`` is still materialized, with metadata
    saying that no reference is registered (so that materializing the group for every county does not fail)."""
    layout, store = storage.layout, storage.storage

    def work(key: str) -> dict:
        county = counties.get(storage, key)
        out = layout.county_agreement(key)
        if county.reference is None:
            with store.atomic_dir(out) as tmp:
                AgreementRecord(county=key, reference=None, note=NO_REFERENCE).write(storage.storage, tmp)
            return {"reference": NO_REFERENCE}
        summary = PredictionsSummary.read(store, layout.county_predictions(key))
        classes, crs = summary.classes, summary.crs
        legend = read_legend(county.reference.legend, storage.for_uri(county.reference.legend))
        legend.lookup(classes)  # a legend class the model lacks fails before any Spark work
        scored = _scored(spark, storage, key)
        grid_def = grid_of(scored)
        if grid_def is None:
            raise no_scored_tiles(storage, key)
        raw = paint(with_cells(scored, grid_def), grid_def, "predicted_index", NODATA)
        reference = reference_on_grid(county.reference.raster, legend, classes, grid_def.transform, grid_def.rows,
                                      grid_def.cols, crs)
        results = map_agreement(raw, reference, classes, NODATA)
        if results["raw"].cells == 0:
            raise CountyError(f"county {key}: no map cell has a reference class: does the reference raster "
                              f"{county.reference.raster} cover the county, and does the legend "
                              f"{county.reference.legend} list its codes?")
        pngs = {variant: confusion_png(a.matrix, classes, f"{key}: map ({variant}) vs reference, "
                                                          f"agreement {100 * a.overall:.1f} %")
                for variant, a in results.items()}
        raw_a, smooth_a = results["raw"], results["smoothed"]
        table = pd.DataFrame({
            "class": classes,
            "reference_cells": raw_a.reference_cells.astype(int),
            "producers_raw": raw_a.producers, "users_raw": raw_a.users,
            "producers_smoothed": smooth_a.producers, "users_smoothed": smooth_a.users,
        })
        labelled = int((reference != UNLABELLED).sum())
        with store.atomic_dir(out) as tmp:
            tmp_store = storage.storage
            for variant, png in pngs.items():
                tmp_store.write_bytes(join(tmp, f"confusion_{variant}.png"), png)
            AgreementRecord(
                county=key, reference={"raster": county.reference.raster, "legend": county.reference.legend},
                classes=classes, crs=crs, grid=[grid_def.rows, grid_def.cols],
                map_cells=int((raw != NODATA).sum()), reference_labelled_cells=labelled,
                raw=raw_a.to_dict(), smoothed=smooth_a.to_dict(), smoothing_gain=smooth_a.overall - raw_a.overall,
            ).write(tmp_store, tmp)
        context.log.info(f"agreement of {key} with its reference: raw {raw_a.overall:.3f}, "
                         f"smoothed {smooth_a.overall:.3f}")
        return {
            "reference_raster": county.reference.raster,
            "cells_compared": raw_a.cells,
            "agreement_raw": round(raw_a.overall, 4),
            "agreement_smoothed": round(smooth_a.overall, 4),
            "smoothing_gain": round(smooth_a.overall - raw_a.overall, 4),
            "error_raw_%": round(100 * (1 - raw_a.overall), 1),
            "error_smoothed_%": round(100 * (1 - smooth_a.overall), 1),
            "per_class": metadata_table(table),
            "confusion_raw": MetadataValue.md(markdown_image(pngs["raw"], f"confusion of the raw map of {key}")),
            "confusion_smoothed": MetadataValue.md(markdown_image(pngs["smoothed"],
                                                                  f"confusion of the smoothed map of {key}")),
            "agreement_json": MetadataValue.path(join(out, "agreement.json")),
            "tiles_changed_by_smoothing": int(np.sum(raw != plurality_smooth(raw, len(classes), NODATA))),
        }

    return run_per_county(context, work)
