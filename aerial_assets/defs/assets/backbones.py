"""Group ``backbones``: ONNX feature extractors built from ImageNet weights, verified before any use."""


import io

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from aerial_assets.backbones.inference import make_session, run_features
from aerial_assets.backbones.networks import (
    IMAGENET_CATS,
    IMAGENET_ESPRESSO,
    export_backbone,
    get_backbone,
    load_weights,
    sample_photos,
    verify_against_reference,
)
from aerial_assets.backbones.zoo import (
    BASE,
    COMBINATION,
    INT8,
    MULTILEVEL,
    cosine_similarity,
    export_entry,
    zoo_entry,
)
from aerial_assets.defs.partitions import backbone_partitions
from aerial_assets.defs.resources import BackboneWeightsResource, StorageResource
from aerial_assets.imagery.decode import load_tile
from aerial_assets.records import BackboneRecord
from aerial_assets.storage.core import join
from aerial_assets.storage.layout import MODEL
from aerial_assets.tables import TileStatus

REFERENCE_TOLERANCE = 1e-4  # max absolute feature difference, ONNX vs the numpy reference
# Multi-level features hold mid-network activations up to a few hundred (SqueezeNet's, unnormalised), where float32
# rounding alone exceeds 1e-4: they are compared relative to the largest feature (measured: under 1e-6).
REFERENCE_REL_TOLERANCE = 1e-5
INT8_MIN_COSINE = 0.95  # INT8 features vs FP32 on the sample photos


class BackboneConfig(Config):
    """INT8 variants are calibrated on this many training tiles (a deterministic sample)."""

    calibration_tiles: int = 200


def _calibration_images(storage: StorageResource, n: int, size: int) -> np.ndarray:
    """``n`` training tiles spread over the classes (sorted by a hash of their id: deterministic)."""
    layout, store = storage.layout, storage.storage
    catalog = pd.read_parquet(io.BytesIO(store.read_bytes(layout.catalog())))
    train = catalog[(catalog["status"] == TileStatus.OK) & (catalog["split"] == "train")].copy()
    train["_order"] = pd.util.hash_pandas_object(train["tile_id"], index=False).to_numpy()
    chosen = train.sort_values("_order").head(n)
    return np.stack([load_tile(storage.for_uri(uri).read_bytes(uri), size) for uri in chosen["uri"]])


@asset(group_name="backbones", partitions_def=backbone_partitions, deps=["labeled_tiles"], kinds={"onnx"})
def backbone_models(
    context: AssetExecutionContext, config: BackboneConfig, storage: StorageResource,
    backbone_weights: BackboneWeightsResource,
) -> MaterializeResult:
    """An ONNX feature extractor per backbone, built from ImageNet weights without torch.

    The graph takes uint8 RGB tiles and does its own preprocessing; it outputs the pooled penultimate
    layer (`features`) and, for single networks, the ImageNet logits. `<name>_int8` is quantized with
    calibration on training tiles (hence the dependency on `labeled_tiles`); `a+b` concatenates the
    features of several networks. Records input size, preprocessing, feature width, weights licence,
    source package and sha256. A packaged weights file whose sha256 differs from the one pinned in
    `aerial_assets.backbones.networks` fails the run before it is read, naming the file and how to reinstall it.
    """
    entry = zoo_entry(context.partition_key)
    calibration = None
    if entry.kind == INT8:
        calibration = _calibration_images(storage, config.calibration_tiles, entry.input_size)
    exported = export_entry(entry, backbone_weights.resolve(storage.layout), calibration)
    out = storage.layout.backbone_model(entry.name)
    model_bytes = exported.model.SerializeToString()
    with storage.storage.atomic_dir(out) as tmp:
        store = storage.storage
        store.write_bytes(join(tmp, MODEL), model_bytes)
        BackboneRecord(**{**exported.record, "kind": entry.kind}).write(store, tmp)
    return MaterializeResult(
        metadata={
            "model": MetadataValue.path(join(out, MODEL)),
            "model_bytes": len(model_bytes),
            "kind": entry.kind,
            **{k: v for k, v in exported.record.items() if isinstance(v, int | str | float) and not isinstance(v, bool)},
        }
    )


def _logits_topk(model_bytes: bytes, photos: np.ndarray, k: int) -> list[list[int]]:
    """The ``k`` best ImageNet classes of each photo, best first."""
    session = make_session(model_bytes, threads=2)
    logits = session.run(["logits"], {"image": photos})[0]
    return [[int(i) for i in np.argsort(-row)[:k]] for row in logits]


@asset_check(asset=backbone_models, blocking=True, partitions_def=backbone_partitions,
             description="ImageNet sanity: the top-1 class of real photos is right (catches wrong preprocessing).")
def backbone_imagenet_sanity(context, storage: StorageResource, backbone_weights: BackboneWeightsResource
                             ) -> AssetCheckResult:
    """A cat photo must come out as a cat and an espresso as an espresso: wrong channel order, scaling or
    weights would silently ruin every downstream accuracy, so this check blocks. A combined backbone has no
    logits: each of its parts is checked (built from the same weights). An INT8 graph's logits move a little
    (espresso can become "coffee mug"): there the right class must be in the top 5, which wrong
    preprocessing would still break."""
    entry = zoo_entry(context.partition_key)
    store = storage.storage
    folder = storage.layout.backbone_model(entry.name)
    if entry.kind == COMBINATION:
        models = {p: export_entry(zoo_entry(p), backbone_weights.resolve(storage.layout)).model
                  .SerializeToString() for p in entry.parts}
    else:
        models = {entry.name: store.read_bytes(join(folder, MODEL))}
    k = 5 if entry.kind == INT8 else 1
    results = {}
    for name, model_bytes in models.items():
        cat, espresso, _ = _logits_topk(model_bytes, sample_photos(zoo_entry(name).input_size), k)
        results[name] = {f"chelsea_top{k}": cat, f"coffee_top{k}": espresso,
                         "passed": bool(set(cat) & set(IMAGENET_CATS)) and bool(set(espresso) & set(IMAGENET_ESPRESSO))}
    return AssetCheckResult(
        passed=all(r["passed"] for r in results.values()),
        metadata={
            "results": MetadataValue.json(results),
            "expected": f"cat in {sorted(IMAGENET_CATS)}, espresso {sorted(IMAGENET_ESPRESSO)}",
        },
    )


@asset_check(asset=backbone_models, blocking=True, partitions_def=backbone_partitions,
             description="The exported ONNX graph agrees with an independent numpy computation of the network "
                         f"(max |difference| of the features < {REFERENCE_TOLERANCE}).")
def backbone_reference_agreement(context, storage: StorageResource, backbone_weights: BackboneWeightsResource
                                 ) -> AssetCheckResult:
    """The graph builder and batch-norm folding could be subtly wrong in ways the top-1 check misses; a plain
    numpy implementation of the same network (float64, unfolded batch norm) must give the same features on
    real photos (multi-level variants: relative to the largest feature, ``REFERENCE_REL_TOLERANCE``). INT8 graphs
    cannot match to 1e-4 by design: their features must keep a cosine similarity of at least 0.95 to the FP32
    graph's. A combination must equal its parts' features side by side."""
    entry = zoo_entry(context.partition_key)
    store = storage.storage
    weights_dir = backbone_weights.resolve(storage.layout)
    model_bytes = store.read_bytes(storage.layout.backbone_onnx(entry.name))
    photos = sample_photos(entry.input_size)
    if entry.kind in (BASE, MULTILEVEL):
        spec = get_backbone(entry.parts[0])
        result = verify_against_reference(spec, model_bytes, load_weights(spec, weights_dir), photos, entry.levels)
        metadata = {k: v for k, v in result.items() if k != "onnx_top1"}
        if entry.kind == BASE:
            passed = result["max_abs_diff"] < REFERENCE_TOLERANCE
            metadata["tolerance"] = REFERENCE_TOLERANCE
        else:
            passed = result["max_rel_diff"] < REFERENCE_REL_TOLERANCE
            metadata["relative_tolerance"] = REFERENCE_REL_TOLERANCE
    elif entry.kind == INT8:
        fp32 = export_backbone(get_backbone(entry.parts[0]), weights_dir).model.SerializeToString()
        int8_feats = run_features(make_session(model_bytes, 2), photos)
        fp32_feats = run_features(make_session(fp32, 2), photos)
        cosine = cosine_similarity(int8_feats, fp32_feats)
        passed = bool(cosine.min() >= INT8_MIN_COSINE)
        metadata = {"min_cosine_to_fp32": float(cosine.min()), "mean_cosine_to_fp32": float(cosine.mean()),
                    "threshold": INT8_MIN_COSINE}
    else:
        combined = run_features(make_session(model_bytes, 2), photos)
        pieces = []
        for part in entry.parts:
            part_model = export_entry(zoo_entry(part), weights_dir).model.SerializeToString()
            pieces.append(run_features(make_session(part_model, 2), sample_photos(zoo_entry(part).input_size)))
        expected = np.concatenate(pieces, axis=1)
        diff = float(np.abs(combined - expected).max())
        # A part resized inside the graph sees bilinear (not Pillow's antialiased) resampling: compare by cosine.
        cosine = cosine_similarity(combined, expected)
        passed = diff < REFERENCE_TOLERANCE if entry.same_input_size else bool(cosine.min() >= 0.99)
        metadata = {"max_abs_diff_to_parts": diff, "min_cosine_to_parts": float(cosine.min()),
                    "feature_dim": int(combined.shape[1]), "same_input_size": entry.same_input_size}
    return AssetCheckResult(passed=bool(passed), metadata=metadata)

