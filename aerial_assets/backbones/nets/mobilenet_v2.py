"""torchvision's MobileNetV2 as an ONNX graph (state-dict keys ``features.N...``, ``classifier.1``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from aerial_assets.backbones.onnx_graph import GraphBuilder, level_blocks

# (expansion t, output channels c, repeats n, first stride s), torchvision's inverted_residual_setting
MOBILENET_V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                         (6, 320, 1, 1)]


def mobilenet_v2_blocks() -> list[tuple[int, int, int, int]]:
    """(input channels, output channels, stride, expansion) of features.1 .. features.17."""
    blocks, channels = [], 32
    for t, c, n, s in MOBILENET_V2_SETTINGS:
        for i in range(n):
            blocks.append((channels, c, s if i == 0 else 1, t))
            channels = c
    return blocks


def mobilenet_v2_block_channels() -> list[int]:
    """Output channels of features.1 .. features.17 (the blocks multi-level features pool)."""
    return [out for _, out, _, _ in mobilenet_v2_blocks()]


def build_mobilenet_v2(
    sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float], bgr: bool = False,
    levels: int = 0,
) -> onnx.ModelProto:
    """torchvision's MobileNetV2: 1280-d features after global pooling (plus ``levels`` pooled block outputs,
    :meth:`GraphBuilder.features`), 1000 ImageNet logits."""
    g = GraphBuilder()
    outputs = []
    x = g.preprocess("image", mean, std, bgr)
    x = g.relu6(g.conv_bn(x, sd, "features.0.0", "features.0.1", stride=2, pad=1))
    for idx, (inp, out, stride, t) in enumerate(mobilenet_v2_blocks(), start=1):
        p = f"features.{idx}.conv"
        y, layer = x, 0
        hidden = inp * t
        if t != 1:
            y = g.relu6(g.conv_bn(y, sd, f"{p}.0.0", f"{p}.0.1"))
            layer = 1
        y = g.relu6(g.conv_bn(y, sd, f"{p}.{layer}.0", f"{p}.{layer}.1", stride=stride, pad=1, groups=hidden))
        y = g.conv_bn(y, sd, f"{p}.{layer + 1}", f"{p}.{layer + 2}")
        x = g.op("Add", [x, y]) if stride == 1 and inp == out else y
        outputs.append(x)
    x = g.relu6(g.conv_bn(x, sd, "features.18.0", "features.18.1"))
    pooled = g.global_pool(x)
    feats = g.features(pooled, outputs, levels)
    g.linear(feats if not levels else pooled, sd["classifier.1.weight"], sd["classifier.1.bias"], name="logits")
    width = 1280 + sum(level_blocks(mobilenet_v2_block_channels(), levels))
    return g.model(input_size, [("features", width), ("logits", 1000)], "torchvision MobileNetV2, ImageNet weights")
