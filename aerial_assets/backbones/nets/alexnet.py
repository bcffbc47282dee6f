"""torchvision's AlexNet as an ONNX graph (keys ``features.{0,3,6,8,10}``, ``classifier.{1,4,6}``).

``features`` are the output of ``classifier.5`` (the ReLU after the second 4096-wide Linear, i.e. the
penultimate layer); dropouts are identities at inference. torchvision's ``AdaptiveAvgPool2d((6, 6))``
is an identity at 224 px, where the last max pool already yields 6x6: the builder computes the map
size and refuses input sizes where the adaptive pool would be anything but an identity or an exact
average pool, rather than silently differ from torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from aerial_assets.backbones.onnx_graph import GraphBuilder, conv_out
from aerial_assets.errors import BackboneError

# (state-dict index, kernel, stride, padding, max pool after)
ALEXNET_CONVS = [(0, 11, 4, 2, True), (3, 5, 1, 2, True), (6, 3, 1, 1, False), (8, 3, 1, 1, False), (10, 3, 1, 1, True)]
ALEXNET_POOLED = 6


def alexnet_feature_map_size(input_size: int) -> int:
    """Spatial size of ``features`` (before the adaptive pool) for a square input."""
    size = input_size
    for _, kernel, stride, pad, pool in ALEXNET_CONVS:
        size = conv_out(size, kernel, stride, 2 * pad)
        if pool:
            size = conv_out(size, 3, 2, 0)
    return size


def build_alexnet(
    sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float], bgr: bool = False
) -> onnx.ModelProto:
    """AlexNet: 4096-d features (``classifier.5``), 1000 ImageNet logits (``classifier.6``)."""
    size = alexnet_feature_map_size(input_size)
    if size < ALEXNET_POOLED or size % ALEXNET_POOLED:
        raise BackboneError(
            f"AlexNet at {input_size} px gives a {size}x{size} map; AdaptiveAvgPool2d(6) is only supported where it "
            f"is an identity or an exact average pool (224 px gives 6x6)"
        )
    g = GraphBuilder()
    x = g.preprocess("image", mean, std, bgr)
    for idx, _kernel, stride, pad, pool in ALEXNET_CONVS:
        x = g.relu(g.conv(x, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], stride=stride, pad=pad))
        if pool:
            x = g.max_pool(x, 3, 2)
    if size != ALEXNET_POOLED:  # at 224 px AdaptiveAvgPool2d((6, 6)) is an identity
        x = g.avg_pool(x, size // ALEXNET_POOLED, size // ALEXNET_POOLED)
    x = g.flatten(x)
    x = g.relu(g.linear(x, sd["classifier.1.weight"], sd["classifier.1.bias"]))
    x = g.relu(g.linear(x, sd["classifier.4.weight"], sd["classifier.4.bias"]))
    feats = g.output("Identity", [x], "features")
    g.linear(feats, sd["classifier.6.weight"], sd["classifier.6.bias"], name="logits")
    return g.model(input_size, [("features", 4096), ("logits", 1000)], "torchvision AlexNet, ImageNet weights")
