"""Plain-numpy reference implementations of every backbone, to verify the ONNX graphs against.

Written independently of :mod:`aerial_assets.backbones.nets` and in the straightforward torchvision / Caffe way:
float64, batch norm applied unfolded with its running statistics, padding computed as the original
code does, architectures re-declared from the original sources rather than imported from the
builders. A bug in a builder (a wrong stride, pad, folding or channel order) then shows up as a
difference instead of being reproduced. Fast enough for a few images (im2col via
``sliding_window_view`` + BLAS ``tensordot``; depthwise convolutions per channel with ``einsum``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

State = dict[str, np.ndarray]

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255.0
_IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255.0


def _preprocess(images: np.ndarray, mean: np.ndarray, std: np.ndarray, bgr: bool, nchw: bool = True) -> np.ndarray:
    x = np.asarray(images, np.float64)
    if bgr:
        x = x[..., ::-1]
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64)


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int = 1,
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    groups: int = 1,
) -> np.ndarray:
    """NCHW convolution with an OIHW weight; ``pads`` = (top, bottom, left, right); groups 1 or depthwise."""
    top, bottom, left, right = pads
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    weight = _f64(weight)
    out_c, in_c, kh, kw = weight.shape
    if groups == 1 and kh == kw == 1:
        out = np.tensordot(weight[:, :, 0, 0], x[:, :, ::stride, ::stride], axes=([1], [1])).transpose(1, 0, 2, 3)
    else:
        windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
        if groups == 1:
            out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
        elif groups == x.shape[1] == out_c and in_c == 1:
            out = np.einsum("nchwij,cij->nchw", windows, weight[:, 0])
        else:
            raise NotImplementedError("only plain and depthwise convolutions are needed")
    if bias is not None:
        out = out + _f64(bias).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(out)


def batch_norm(x: np.ndarray, sd: State, prefix: str, eps: float = 1e-5) -> np.ndarray:
    """Inference batch norm with running statistics (not folded)."""
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    mean = _f64(sd[f"{prefix}.running_mean"]).reshape(shape)
    var = _f64(sd[f"{prefix}.running_var"]).reshape(shape)
    gamma, beta = _f64(sd[f"{prefix}.weight"]).reshape(shape), _f64(sd[f"{prefix}.bias"]).reshape(shape)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def max_pool(x: np.ndarray, kernel: int, stride: int, pad: int = 0, ceil_mode: bool = False) -> np.ndarray:
    """torch's ``MaxPool2d`` on NCHW (ceil mode: a partial last window counts if it starts in bounds)."""
    size = x.shape[2]
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    extra = max((out - 1) * stride + kernel - (size + 2 * pad), 0)
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad + extra), (pad, pad + extra)), constant_values=-np.inf)
    windows = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return windows[:, :, :out, :out].max(axis=(4, 5))


def linear(x: np.ndarray, sd: State, prefix: str) -> np.ndarray:
    return x @ _f64(sd[f"{prefix}.weight"]).T + _f64(sd[f"{prefix}.bias"])


def gap(x: np.ndarray) -> np.ndarray:
    """Global average pool, NCHW -> [N, C]."""
    return x.mean(axis=(2, 3))


# --- MobileNetV2 (torchvision/models/mobilenetv2.py) --------------------------------------------
def _with_levels(feats: np.ndarray, pooled_blocks: list[np.ndarray], levels: int) -> np.ndarray:
    """Multi-level features: the pooled head, then the pooled outputs of the ``levels`` blocks before the last."""
    if not levels:
        return feats
    return np.concatenate([feats, *pooled_blocks[-levels - 1:-1]], axis=1)


def mobilenet_v2(sd: State, images: np.ndarray, levels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    blocks = []
    x = _preprocess(images, _IMAGENET_MEAN, _IMAGENET_STD, bgr=False)
    x = relu6(batch_norm(conv2d(x, sd["features.0.0.weight"], stride=2, pads=(1, 1, 1, 1)), sd, "features.0.1"))
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]
    index, in_c = 1, 32
    for t, c, n, s in setting:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{index}.conv"
            y = x
            j = 0
            if t != 1:  # ConvBNReLU 1x1 expansion
                y = relu6(batch_norm(conv2d(y, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1"))
                j = 1
            # depthwise ConvBNReLU 3x3, then the linear 1x1 projection conv + BN
            y = conv2d(y, sd[f"{p}.{j}.0.weight"], stride=stride, pads=(1, 1, 1, 1), groups=y.shape[1])
            y = relu6(batch_norm(y, sd, f"{p}.{j}.1"))
            y = batch_norm(conv2d(y, sd[f"{p}.{j + 1}.weight"]), sd, f"{p}.{j + 2}")
            x = x + y if stride == 1 and in_c == c else y
            blocks.append(gap(x))
            in_c = c
            index += 1
    x = relu6(batch_norm(conv2d(x, sd[f"features.{index}.0.weight"]), sd, f"features.{index}.1"))
    feats = gap(x)
    return _with_levels(feats, blocks, levels), linear(feats, sd, "classifier.1")


# --- EfficientNet-Lite0/1/2 (efficientnet_lite_pytorch 0.1.0, model.py / utils.py) ------------------
def _same_pad_conv(x: np.ndarray, weight: np.ndarray, stride: int, groups: int = 1) -> np.ndarray:
    """``Conv2dDynamicSamePadding``: TensorFlow 'SAME', extra pixel at the bottom/right."""
    ih, iw = x.shape[2:]
    kh, kw = weight.shape[2:]
    oh, ow = math.ceil(ih / stride), math.ceil(iw / stride)
    pad_h = max((oh - 1) * stride + kh - ih, 0)
    pad_w = max((ow - 1) * stride + kw - iw, 0)
    pads = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
    return conv2d(x, weight, stride=stride, pads=pads, groups=groups)


# efficientnet_lite_params of efficientnet_lite_pytorch's utils.py: (width, depth, resolution, dropout)
_LITE_PARAMS = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
_LITE_BLOCKS_ARGS = ["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
                     "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320"]


def _lite_round_filters(filters: int, width: float) -> int:
    """``round_filters`` of utils.py (depth_divisor 8, min_depth None)."""
    if not width:
        return filters
    filters = filters * width
    new_filters = max(8, int(filters + 8 / 2) // 8 * 8)
    if new_filters < 0.9 * filters:
        new_filters += 8
    return int(new_filters)


def _efficientnet_lite(name: str, sd: State, images: np.ndarray, levels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    blocks = []
    width, depth = _LITE_PARAMS[name]
    eps = 1e-3  # batch_norm_epsilon of efficientnet_lite()
    x = _preprocess(images, np.full(3, 127.0), np.full(3, 128.0), bgr=False)
    x = relu6(batch_norm(_same_pad_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0", eps))  # stem fixed at 32
    idx = 0
    for position, block_string in enumerate(_LITE_BLOCKS_ARGS):
        opts = {part[0]: int(part[1:]) for part in block_string.split("_")}
        repeats, stride, expand = opts["r"], opts["s"] // 10, opts["e"]
        in_f, out_f = _lite_round_filters(opts["i"], width), _lite_round_filters(opts["o"], width)
        if position not in (0, len(_LITE_BLOCKS_ARGS) - 1):  # fix_head_stem: first and last repeats unscaled
            repeats = int(math.ceil(depth * repeats))
        for r in range(repeats):
            p = f"_blocks.{idx}"
            inputs = x
            if expand != 1:
                x = relu6(batch_norm(conv2d(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0", eps))
            x = _same_pad_conv(x, sd[f"{p}._depthwise_conv.weight"], stride, groups=x.shape[1])
            x = relu6(batch_norm(x, sd, f"{p}._bn1", eps))
            x = batch_norm(conv2d(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2", eps)
            if stride == 1 and in_f == out_f:  # id_skip (drop connect is off at inference)
                x = x + inputs
            blocks.append(gap(x))
            idx += 1
            if r == 0:
                in_f, stride = out_f, 1
    if f"_blocks.{idx}._project_conv.weight" in sd:
        raise ValueError(f"{name}: the weights hold more than the {idx} blocks of the architecture")
    x = relu6(batch_norm(conv2d(x, sd["_conv_head.weight"]), sd, "_bn1", eps))  # head fixed at 1280
    feats = gap(x)
    return _with_levels(feats, blocks, levels), linear(feats, sd, "_fc")


def efficientnet_lite0(sd: State, images: np.ndarray, levels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return _efficientnet_lite("efficientnet_lite0", sd, images, levels)


def efficientnet_lite1(sd: State, images: np.ndarray, levels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return _efficientnet_lite("efficientnet_lite1", sd, images, levels)


def efficientnet_lite2(sd: State, images: np.ndarray, levels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return _efficientnet_lite("efficientnet_lite2", sd, images, levels)


# --- SqueezeNet 1.1 (Caffe prototxt; Keras HWIO weights of ndf), computed channels-last ---------
def _conv_nhwc(x: np.ndarray, sd: State, layer: str, stride: int = 1, pad: int = 0) -> np.ndarray:
    kernel, bias = _f64(sd[f"{layer}/kernel"]), _f64(sd[f"{layer}/bias"])  # [kh, kw, in, out]
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    windows = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # [N, OH, OW, C, kh, kw]
    return relu(np.tensordot(windows, kernel, axes=([3, 4, 5], [2, 0, 1])) + bias)


def _max_pool_nhwc_ceil(x: np.ndarray) -> np.ndarray:
    """Caffe's 3x3/2 max pool, which rounds the output size up."""
    size = x.shape[1]
    out = math.ceil((size - 3) / 2) + 1
    extra = (out - 1) * 2 + 3 - size
    x = np.pad(x, ((0, 0), (0, extra), (0, extra), (0, 0)), constant_values=-np.inf)
    return sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(4, 5))


def squeezenet1_1(sd: State, images: np.ndarray, levels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    blocks = []
    x = _preprocess(images, np.array([104.006, 116.669, 122.679]), np.ones(3), bgr=True, nchw=False)
    x = _conv_nhwc(x, sd, "conv1", stride=2)
    for fire in range(2, 10):
        if fire in (2, 4, 6):
            x = _max_pool_nhwc_ceil(x)
        squeeze = _conv_nhwc(x, sd, f"fire{fire}/squeeze1x1")
        x = np.concatenate([_conv_nhwc(squeeze, sd, f"fire{fire}/expand1x1"),
                            _conv_nhwc(squeeze, sd, f"fire{fire}/expand3x3", pad=1)], axis=-1)
        blocks.append(x.mean(axis=(1, 2)))
    feats = x.mean(axis=(1, 2))
    return _with_levels(feats, blocks, levels), _conv_nhwc(x, sd, "conv10").mean(axis=(1, 2))


# --- ResNet-18 (torchvision/models/resnet.py) ---------------------------------------------------
def resnet18(sd: State, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _preprocess(images, _IMAGENET_MEAN, _IMAGENET_STD, bgr=False)
    x = relu(batch_norm(conv2d(x, sd["conv1.weight"], stride=2, pads=(3, 3, 3, 3)), sd, "bn1"))
    x = max_pool(x, 3, 2, pad=1)
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            stride = 2 if layer > 1 and block == 0 else 1
            identity = x
            out = relu(batch_norm(conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, pads=(1, 1, 1, 1)), sd, f"{p}.bn1"))
            out = batch_norm(conv2d(out, sd[f"{p}.conv2.weight"], pads=(1, 1, 1, 1)), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                identity = batch_norm(conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            x = relu(out + identity)
    feats = gap(x)
    return feats, linear(feats, sd, "fc")


# --- AlexNet (torchvision/models/alexnet.py) ----------------------------------------------------
def _adaptive_avg_pool(x: np.ndarray, out: int) -> np.ndarray:
    """torch's AdaptiveAvgPool2d: bin i spans [floor(i*H/out), ceil((i+1)*H/out))."""
    size = x.shape[2]
    bounds = [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]
    return np.stack([np.stack([x[:, :, a:b, c:d].mean(axis=(2, 3)) for c, d in bounds], axis=-1)
                     for a, b in bounds], axis=-2)


def alexnet(sd: State, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _preprocess(images, _IMAGENET_MEAN, _IMAGENET_STD, bgr=False)

    def conv(x_: np.ndarray, idx: int, stride: int, pad: int) -> np.ndarray:
        return relu(conv2d(x_, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], stride, (pad,) * 4))

    x = max_pool(conv(x, 0, 4, 2), 3, 2)
    x = max_pool(conv(x, 3, 1, 2), 3, 2)
    x = conv(conv(conv(x, 6, 1, 1), 8, 1, 1), 10, 1, 1)
    x = max_pool(x, 3, 2)
    x = _adaptive_avg_pool(x, 6).reshape(len(x), -1)  # torch.flatten(x, 1): C, H, W order
    x = relu(linear(x, sd, "classifier.1"))  # classifier.0 / .3 are dropouts: identities at inference
    feats = relu(linear(x, sd, "classifier.4"))  # classifier.5
    return feats, linear(feats, sd, "classifier.6")


REFERENCE_NETS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_lite0": efficientnet_lite0,
    "efficientnet_lite1": efficientnet_lite1,
    "efficientnet_lite2": efficientnet_lite2,
    "squeezenet1_1": squeezenet1_1,
    "resnet18": resnet18,
    "alexnet": alexnet,
}


def reference_outputs(backbone_name: str, state_dict: State, images_uint8: np.ndarray,
                      levels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) in float64 for uint8 NHWC RGB images already at the backbone's input size; with
    ``levels``, the features are multi-level (mobilenet_v2, the EfficientNet-Lites and squeezenet1_1)."""
    if backbone_name not in REFERENCE_NETS:
        raise KeyError(f"no reference implementation for {backbone_name!r}; have {sorted(REFERENCE_NETS)}")
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [N, S, S, 3] images, got {images.dtype} {images.shape}")
    if levels:
        return REFERENCE_NETS[backbone_name](state_dict, images, levels)
    return REFERENCE_NETS[backbone_name](state_dict, images)


def reference_features(backbone_name: str, state_dict: State, images_uint8: np.ndarray,
                       levels: int = 0) -> np.ndarray:
    """The backbone's features (float64, ``[N, D]``) computed in plain numpy."""
    return reference_outputs(backbone_name, state_dict, images_uint8, levels)[0]
