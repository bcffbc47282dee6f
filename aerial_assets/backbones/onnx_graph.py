"""Build ONNX feature extractors from plain numpy weights with ``onnx.helper`` (no torch needed).

Every graph takes ``image``: uint8 RGB pixels, shape ``[N, S, S, 3]`` (channels last, as Pillow and
rasterio hand them over), and does the backbone's own preprocessing inside the graph: channel order,
mean and scale. Preprocessing then travels with the model, so an executor cannot get it wrong, and
the executors ship four times fewer bytes than float tensors. Outputs: ``features`` (the pooled
penultimate layer, ``[N, D]``) and, where the network has one, ``logits`` (``[N, 1000]``).
Batch norms are folded into the preceding convolutions.

This module holds only the generic pieces (:class:`GraphBuilder`, batch-norm folding); each
network's builder lives in :mod:`aerial_assets.backbones.nets`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
BN_EPS = 1e-5

Pads = int | tuple[int, int, int, int]  # one value for all sides, or (top, left, bottom, right)


def _pads(pad: Pads) -> list[int]:
    """ONNX order: [top, left, bottom, right] (begin of H, W, then end of H, W)."""
    if isinstance(pad, int):
        return [pad, pad, pad, pad]
    top, left, bottom, right = pad
    return [top, left, bottom, right]


class GraphBuilder:
    """Accumulates nodes and initializers; names are generated so callers never collide."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array: np.ndarray, hint: str = "c") -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attrs: object) -> str:
        out = self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def output(self, op_type: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name

    # --- layers -----------------------------------------------------------------------------
    def preprocess(self, image: str, mean: Sequence[float], std: Sequence[float], bgr: bool) -> str:
        """uint8 NHWC RGB -> float32 NCHW, channel order and normalisation of the backbone."""
        x = self.op("Cast", [image], to=TensorProto.FLOAT)
        x = self.op("Transpose", [x], perm=[0, 3, 1, 2])
        mean_arr = np.asarray(mean, np.float32)
        std_arr = np.asarray(std, np.float32)
        if bgr:
            x = self.op("Gather", [x, self.const(np.array([2, 1, 0], np.int64), "bgr")], axis=1)
        x = self.op("Sub", [x, self.const(mean_arr.reshape(1, 3, 1, 1), "mean")])
        if np.all(std_arr == 1.0):  # Caffe-style nets only subtract the mean
            return x
        return self.op("Mul", [x, self.const((1.0 / std_arr).reshape(1, 3, 1, 1), "inv_std")])

    def conv(
        self,
        x: str,
        weight: np.ndarray,
        bias: np.ndarray | None,
        stride: int = 1,
        pad: Pads = 0,
        groups: int = 1,
    ) -> str:
        """A 2-D convolution; ``weight`` is OIHW (torch layout), ``pad`` may be asymmetric (TF 'SAME')."""
        inputs = [x, self.const(weight.astype(np.float32), "w")]
        if bias is not None:
            inputs.append(self.const(bias.astype(np.float32), "b"))
        k_h, k_w = weight.shape[2], weight.shape[3]
        return self.op(
            "Conv", inputs, kernel_shape=[k_h, k_w], strides=[stride, stride], pads=_pads(pad), group=groups
        )

    def conv_bn(
        self,
        x: str,
        sd: dict[str, np.ndarray],
        conv: str,
        bn: str,
        stride: int = 1,
        pad: Pads = 0,
        groups: int = 1,
        eps: float = BN_EPS,
    ) -> str:
        weight, bias = fold_batch_norm(sd, conv, bn, eps)
        return self.conv(x, weight, bias, stride, pad, groups)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def relu6(self, x: str) -> str:
        return self.op("Clip", [x, self.const(np.array(0, np.float32)), self.const(np.array(6, np.float32))])

    def max_pool(self, x: str, kernel: int, stride: int, pad: int = 0, ceil_mode: bool = False) -> str:
        """Max pooling; ``ceil_mode`` as in torch/Caffe (a last, partial window is kept)."""
        return self.op(
            "MaxPool", [x], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=_pads(pad),
            ceil_mode=int(ceil_mode),
        )

    def avg_pool(self, x: str, kernel: int, stride: int) -> str:
        return self.op("AveragePool", [x], kernel_shape=[kernel, kernel], strides=[stride, stride])

    def concat(self, xs: Sequence[str], axis: int = 1) -> str:
        return self.op("Concat", list(xs), axis=axis)

    def flatten(self, x: str) -> str:
        """[N, C, H, W] -> [N, C*H*W] in C, H, W order (as ``torch.flatten(x, 1)``)."""
        return self.op("Flatten", [x], axis=1)

    def global_pool(self, x: str) -> str:
        return self.flatten(self.op("GlobalAveragePool", [x]))

    def features(self, pooled: str, blocks: Sequence[str], levels: int) -> str:
        """The ``features`` output: the pooled head (``pooled``), followed, when ``levels`` > 0, by the globally
        pooled outputs of the ``levels`` blocks before the last one (multi-level features: the mid-level
        textures and parts that aerial scenes are told apart by, which the ImageNet head has partly discarded)."""
        if levels <= 0:
            return self.output("Identity", [pooled], "features")
        taps = [self.global_pool(b) for b in level_blocks(blocks, levels)]
        return self.output("Concat", [pooled, *taps], "features", axis=1)

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, name: str | None = None) -> str:
        """``y = x W^T + b`` with torch's ``[out, in]`` weight."""
        inputs = [x, self.const(weight.astype(np.float32), "fc_w"), self.const(bias.astype(np.float32), "fc_b")]
        if name:
            return self.output("Gemm", inputs, name, transB=1)
        return self.op("Gemm", inputs, transB=1)

    def model(self, input_size: int, outputs: Sequence[tuple[str, int]], doc: str) -> onnx.ModelProto:
        """Finish the graph: one uint8 input of ``input_size`` px, float outputs of the given widths."""
        graph = helper.make_graph(
            self.nodes,
            "feature_extractor",
            [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", input_size, input_size, 3])],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]) for name, width in outputs],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], doc_string=doc)
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def level_blocks(blocks: Sequence, levels: int) -> list:
    """The ``levels`` blocks before the last one (whose output feeds the head), in network order: one rule for
    the graphs, the numpy references and the feature widths."""
    if levels < 0 or levels >= len(blocks):
        raise ValueError(f"levels must be in [0, {len(blocks) - 1}], got {levels}")
    return list(blocks[-levels - 1:-1]) if levels else []


def fold_batch_norm(
    sd: dict[str, np.ndarray], conv: str, bn: str, eps: float = BN_EPS
) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``bn`` (inference statistics) into the weights of ``conv``: y = conv'(x) + b'."""
    weight = sd[f"{conv}.weight"].astype(np.float64)
    bias = sd.get(f"{conv}.bias")
    gamma, beta = sd[f"{bn}.weight"].astype(np.float64), sd[f"{bn}.bias"].astype(np.float64)
    mean, var = sd[f"{bn}.running_mean"].astype(np.float64), sd[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + eps)
    folded_w = weight * scale.reshape(-1, 1, 1, 1)
    base = bias.astype(np.float64) if bias is not None else np.zeros_like(mean)
    folded_b = (base - mean) * scale + beta
    return folded_w.astype(np.float32), folded_b.astype(np.float32)


def conv_out(size: int, kernel: int, stride: int, pad_total: int, ceil_mode: bool = False) -> int:
    """Output size of a convolution or pooling along one axis (torch's rule, ceil mode included)."""
    span = size + pad_total - kernel
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad_total // 2:  # the last window must start inside the input (torch)
        out -= 1
    return out
