"""The backbone partitions: base networks, their INT8 and multi-level variants and combinations of several.

A base backbone is one :class:`~aerial_assets.backbones.networks.BackboneSpec`. ``<base>_int8`` is that network
statically quantized (QDQ, per channel) with calibration on the training tiles: about twice the
inference speed on CPUs with VNNI, features within a cosine of ~0.99 of FP32. ``a+b`` concatenates
the features of ``a`` and ``b``: richer features for the classifier, at the sum of their costs,
reusing the parts' cached features when they were computed on the same catalog. ``<base>_multilevel`` is the
same network whose features also hold the globally pooled outputs of its last blocks before the final one
(:data:`LEVELS` of them; :meth:`aerial_assets.backbones.onnx_graph.GraphBuilder.features`): the mid-level
textures and parts that tell aerial scenes apart, at almost no extra inference cost. Its logits are the base
network's. No Dagster import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from aerial_assets.backbones.nets.combined import combine_models
from aerial_assets.backbones.networks import BACKBONES, ExportedBackbone, export_backbone, get_backbone
from aerial_assets.backbones.quantization import quantize_int8
from aerial_assets.errors import ConfigurationError

INT8_SUFFIX = "_int8"
INT8_VARIANTS = ("mobilenet_v2_int8",)
MULTILEVEL_SUFFIX = "_multilevel"
MULTILEVEL_VARIANTS = ("mobilenet_v2_multilevel", "efficientnet_lite0_multilevel", "squeezenet1_1_multilevel")
LEVELS = 4  # pooled block outputs added to the head's features (AID: +1.1 to +1.4 points for a linear model, docs/user-guide/presets.md)
COMBINED = ("mobilenet_v2+efficientnet_lite0", "mobilenet_v2+efficientnet_lite2",
            "mobilenet_v2+efficientnet_lite0+squeezenet1_1",
            "mobilenet_v2_multilevel+efficientnet_lite0_multilevel+squeezenet1_1_multilevel")

BASE, INT8, MULTILEVEL, COMBINATION = "base", "int8", "multilevel", "combined"


@dataclass(frozen=True)
class ZooEntry:
    """What a backbone partition is made of."""

    name: str
    kind: str
    parts: tuple[str, ...]

    @property
    def levels(self) -> int:
        """Pooled block outputs in the features (multi-level variants), else 0."""
        return LEVELS if self.kind == MULTILEVEL else 0

    @property
    def input_size(self) -> int:
        """The graph's input: the largest part's (smaller parts resize inside the graph)."""
        if self.kind == COMBINATION:
            return max(zoo_entry(p).input_size for p in self.parts)
        return get_backbone(self.parts[0]).input_size

    @property
    def feature_dim(self) -> int:
        if self.kind == COMBINATION:
            return sum(zoo_entry(p).feature_dim for p in self.parts)
        return get_backbone(self.parts[0]).level_dim(self.levels)

    @property
    def same_input_size(self) -> bool:
        """True when every part takes the same input: their cached features then equal the combined graph's."""
        return len({zoo_entry(p).input_size for p in self.parts}) == 1


def zoo_names() -> list[str]:
    """Every backbone partition, base networks first."""
    return [*BACKBONES, *INT8_VARIANTS, *MULTILEVEL_VARIANTS, *COMBINED]


def zoo_entry(name: str) -> ZooEntry:
    """Parse a backbone name; unknown names list the valid ones."""
    if name in BACKBONES:
        return ZooEntry(name, BASE, (name,))
    if name in INT8_VARIANTS:
        return ZooEntry(name, INT8, (name[: -len(INT8_SUFFIX)],))
    if name in MULTILEVEL_VARIANTS:
        return ZooEntry(name, MULTILEVEL, (name[: -len(MULTILEVEL_SUFFIX)],))
    if name in COMBINED:
        return ZooEntry(name, COMBINATION, tuple(name.split("+")))
    raise ConfigurationError(f"unknown backbone {name!r}; valid backbones: {', '.join(zoo_names())}")


def export_entry(entry: ZooEntry, weights_dir: str | None = None,
                 calibration_images: np.ndarray | None = None) -> ExportedBackbone:
    """Build the ONNX graph of a zoo entry and its record (parts' records included for variants)."""
    if entry.kind == BASE:
        return export_backbone(get_backbone(entry.name), weights_dir)
    if entry.kind == MULTILEVEL:
        exported = export_backbone(get_backbone(entry.parts[0]), weights_dir, entry.levels)
        record = {**exported.record, "backbone": entry.name, "base_backbone": entry.parts[0], "levels": entry.levels}
        return ExportedBackbone(model=exported.model, record=record)
    parts = [export_entry(zoo_entry(p), weights_dir) for p in entry.parts]
    if entry.kind == INT8:
        if calibration_images is None or not len(calibration_images):
            raise ConfigurationError(f"{entry.name} needs calibration tiles (the training split is empty)")
        started = time.monotonic()
        quantized = quantize_int8(parts[0].model.SerializeToString(), calibration_images)
        record = {**parts[0].record, "backbone": entry.name, "base_backbone": entry.parts[0],
                  "quantization": "static INT8, QDQ, per-channel (onnxruntime.quantization), calibrated on "
                                  f"{len(calibration_images)} training tiles",
                  "calibration_tiles": int(len(calibration_images)),
                  "quantization_seconds": round(time.monotonic() - started, 1)}
        return ExportedBackbone(model=onnx.load_from_string(quantized), record=record)
    model = combine_models([p.model for p in parts], entry.input_size)
    record = {
        "backbone": entry.name, "input_size": entry.input_size, "feature_dim": entry.feature_dim,
        "parts": list(entry.parts), "preprocessing": "per part: " + "; ".join(
            f"{p.record['backbone']}: {p.record['preprocessing']}" for p in parts),
        "weights_license": "; ".join(f"{p.record['backbone']}: {p.record['weights_license']}" for p in parts),
        "weights_source": "; ".join(str(p.record["weights_source"]) for p in parts),
        "weights_sha256": ",".join(str(p.record["weights_sha256"]) for p in parts),
        "weights_package": ", ".join(str(p.record["weights_package"]) for p in parts if p.record["weights_package"]),
        "onnx_opset": model.opset_import[0].version,
        "part_records": [p.record for p in parts],
    }
    return ExportedBackbone(model=model, record=record)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[N, D]`` arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
