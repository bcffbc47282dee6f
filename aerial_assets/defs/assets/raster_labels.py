"""Group ``tiles``: training tiles cut from imagery rasters and labelled from a land-cover raster."""


import hashlib
import io

import pandas as pd
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from PIL import Image

from aerial_assets.defs.assets._io import metadata_table
from aerial_assets.defs.resources import StorageResource, TrainingRastersResource
from aerial_assets.errors import ConfigurationError
from aerial_assets.imagery.raster_labels import LabelRule, label_tiles, load_legend, raster_name
from aerial_assets.imagery.rasters import grid_shape, open_info
from aerial_assets.records import RasterLabelsSummary
from aerial_assets.safety import csv_files
from aerial_assets.storage.core import is_local, join, local_path
from aerial_assets.training.spatial_splits import POSITIONS_FILE


class RasterLabeledTilesConfig(Config):
    """Tile size (metres, as county tiles) and the labelling rule: ``points9`` (the 3 x 3 sample points agree)
    or ``purity`` (the plurality class covers at least ``purity`` of the window)."""

    tile_size_m: float = 224.0
    mode: str = "points9"
    purity: float = 0.9


def _sha256(uri: str, storage: StorageResource) -> dict[str, object]:
    """The source's content hash: streamed for a local file, from its bytes otherwise."""
    digest = hashlib.sha256()
    if is_local(uri):
        with open(local_path(uri), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(storage.for_uri(uri).read_bytes(uri))
    return {"uri": uri, "sha256": digest.hexdigest()}


@asset(group_name="tiles", kinds={"rasterio", "png"})
def raster_labeled_tiles(
    context: AssetExecutionContext,
    config: RasterLabeledTilesConfig,
    storage: StorageResource,
    training_rasters: TrainingRastersResource,
) -> MaterializeResult:
    """Training tiles labelled from a land-cover raster (`AERIAL_TRAINING_RASTERS`, a YAML spec
    `{imagery: [tif, ...], landcover: tif, legend: yaml}`).

    Each imagery raster is cut into `tile_size_m` tiles; the land-cover codes under each tile are read on the
    tile's own grid (reprojected with nearest neighbour when the CRSs differ) and the rule decides the label.
    Labelled tiles are written as `tiles/<class>/<tile_id>.png` (native resolution), which `labeled_tiles`
    catalogs like any training folder; every tile, labelled or not, is a row of `tiles.csv` with its reason,
    so none is dropped silently. `summary.json` holds the counts and both rasters' sha256 (lineage).

    Runs on the driver, not on Spark: one tile window (imagery and land cover) is in memory at a time, and the
    PNGs are written into the asset's atomic folder, which executors of a remote cluster cannot reach.
    """
    if not training_rasters.uri:
        # Declared upstream of labeled_tiles (lineage to both rasters); without a spec there is nothing to label
        # and labeled_tiles reads its folder, so "materialize all" must not fail here.
        context.log.info("AERIAL_TRAINING_RASTERS is unset: no tiles to label")
        return MaterializeResult(metadata={"configured": False, "note": "AERIAL_TRAINING_RASTERS is unset: "
                                           "labeled_tiles reads AERIAL_TRAINING_TILES (or the demo set)"})
    try:
        rule = LabelRule(mode=config.mode, purity=config.purity)
    except ValueError as exc:
        raise ConfigurationError(f"raster_labeled_tiles: mode must be points9 or purity and purity in (0, 1]; got "
                                 f"mode={config.mode!r}, purity={config.purity}") from exc
    spec = training_rasters.load(storage)
    legend_store = storage.for_uri(spec.legend)
    if not legend_store.exists(spec.legend):
        raise ConfigurationError(f"legend {spec.legend} not found (the legend: of {training_rasters.uri})")
    legend = load_legend(legend_store.read_text(spec.legend), spec.legend)
    infos = [open_info(uri) for uri in spec.imagery]
    for info in infos:
        rows, cols, _ = grid_shape(info, config.tile_size_m)
        if rows * cols == 0:
            raise ConfigurationError(f"imagery {info.uri} ({info.width}x{info.height} px) is smaller than one "
                                     f"{config.tile_size_m} m tile; lower tile_size_m")

    out = storage.layout.raster_labeled_tiles()
    records = []
    with storage.storage.atomic_dir(out) as tmp:
        store = storage.storage
        for info in infos:
            for tile in label_tiles(info.uri, spec.landcover, legend, config.tile_size_m, rule, info=info):
                if tile.label is not None:
                    buf = io.BytesIO()
                    Image.fromarray(tile.pixels).save(buf, format="PNG")
                    store.write_bytes(join(tmp, "tiles", tile.label, f"{tile.tile_id}.png"), buf.getvalue())
                records.append(tile.record())
            context.log.info(f"{info.uri}: {len(records)} tiles so far")
        table = pd.DataFrame.from_records(records, columns=["tile_id", "raster", "row", "col", "left", "bottom",
                                                            "right", "top", "crs", "label", "reason"])
        labelled = table[table["label"] != ""]
        per_class = {str(k): int(v) for k, v in labelled.groupby("label").size().items()}
        per_reason = {str(k): int(v) for k, v in table[table["label"] == ""].groupby("reason").size().items()}
        summary = RasterLabelsSummary(
            tiles=len(table), n_labelled=len(labelled), n_unlabelled=len(table) - len(labelled),
            per_class=per_class, unlabelled_by_reason=per_reason,
            rule={**rule.model_dump(), "description": rule.describe()}, tile_size_m=config.tile_size_m,
            sources={"spec": training_rasters.uri, "imagery": [_sha256(uri, storage) for uri in spec.imagery],
                     "landcover": _sha256(spec.landcover, storage),
                     "legend": _sha256(spec.legend, storage)},
        )
        store.write_text(join(tmp, "tiles.csv"), csv_files.to_csv(table))
        # where each labelled tile lies: labeled_tiles then splits by whole map blocks (aerial_assets.training.spatial_splits).
        # The source is the raster's file name (unique in a spec), not its full path: the split's seeded order
        # hashes it, and must not change with the folder the rasters happen to sit in.
        positions = labelled.assign(filename=labelled["label"] + "/" + labelled["tile_id"] + ".png",
                                    source=labelled["raster"].map(raster_name))
        store.write_text(join(tmp, "tiles", POSITIONS_FILE),
                         csv_files.to_csv(positions[["filename", "left", "bottom", "right", "top", "source"]]))
        summary.write(store, tmp)

    counts = pd.DataFrame([{"class": k, "tiles": v} for k, v in per_class.items()], columns=["class", "tiles"])
    reasons = pd.DataFrame([{"reason": k, "tiles": v} for k, v in per_reason.items()], columns=["reason", "tiles"])
    return MaterializeResult(metadata={
        "tiles": MetadataValue.path(join(out, "tiles")),
        "tiles_csv": MetadataValue.path(join(out, "tiles.csv")),
        "dagster/row_count": len(table),
        "n_labelled": len(labelled),
        "n_unlabelled": len(table) - len(labelled),
        "rule": rule.describe(),
        "counts_per_class": metadata_table(counts),
        "unlabelled_by_reason": metadata_table(reasons),
        "landcover": MetadataValue.path(spec.landcover),
        "landcover_sha256": summary.sources["landcover"]["sha256"],
        "imagery": ", ".join(spec.imagery),
    })
