"""torchvision's ResNet-18 as an ONNX graph (keys ``conv1``, ``bn1``, ``layerL.B.*``, ``fc``).

BasicBlocks, two per stage; the first block of stages 2-4 has stride 2 and a 1x1 ``downsample``
(conv + batch norm) on the shortcut. ``features`` are the 512-d average-pooled output of ``layer4``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from aerial_assets.backbones.onnx_graph import GraphBuilder

RESNET18_LAYERS = (2, 2, 2, 2)


def build_resnet18(
    sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float], bgr: bool = False
) -> onnx.ModelProto:
    """ResNet-18: 512-d features (avgpool), 1000 ImageNet logits (``fc``)."""
    g = GraphBuilder()
    x = g.preprocess("image", mean, std, bgr)
    x = g.relu(g.conv_bn(x, sd, "conv1", "bn1", stride=2, pad=3))
    x = g.max_pool(x, 3, 2, pad=1)
    for stage, blocks in enumerate(RESNET18_LAYERS, start=1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = g.relu(g.conv_bn(x, sd, f"{p}.conv1", f"{p}.bn1", stride=stride, pad=1))
            y = g.conv_bn(y, sd, f"{p}.conv2", f"{p}.bn2", pad=1)
            shortcut = x
            if f"{p}.downsample.0.weight" in sd:
                shortcut = g.conv_bn(x, sd, f"{p}.downsample.0", f"{p}.downsample.1", stride=stride)
            x = g.relu(g.op("Add", [y, shortcut]))
    feats = g.output("Identity", [g.global_pool(x)], "features")
    g.linear(feats, sd["fc.weight"], sd["fc.bias"], name="logits")
    return g.model(input_size, [("features", 512), ("logits", 1000)], "torchvision ResNet-18, ImageNet weights")
