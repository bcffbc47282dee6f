"""Build ONNX feature extractors from plain numpy weights with ``onnx.helper`` (no torch needed).

Every graph takes ``image``: uint8 RGB pixels, shape ``[N, S, S, 3]`` (channels last, as Pillow and
rasterio hand them over), and does the backbone's own preprocessing inside the graph: channel order,
mean and scale. Preprocessing then travels with the model, so an executor cannot get it wrong, and
the executors ship four times fewer bytes than float tensors. Outputs: ``features`` (the pooled
penultimate layer, ``[N, D]``) and, where the network has one, ``logits`` (``[N, 1000]``).
Batch norms are folded into the preceding convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
BN_EPS = 1e-5


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
        return self.op("Mul", [x, self.const((1.0 / std_arr).reshape(1, 3, 1, 1), "inv_std")])

    def conv(
        self,
        x: str,
        weight: np.ndarray,
        bias: np.ndarray | None,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
    ) -> str:
        inputs = [x, self.const(weight.astype(np.float32), "w")]
        if bias is not None:
            inputs.append(self.const(bias.astype(np.float32), "b"))
        k_h, k_w = weight.shape[2], weight.shape[3]
        return self.op(
            "Conv", inputs, kernel_shape=[k_h, k_w], strides=[stride, stride], pads=[pad, pad, pad, pad], group=groups
        )

    def conv_bn(
        self,
        x: str,
        sd: dict[str, np.ndarray],
        conv: str,
        bn: str,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        eps: float = BN_EPS,
    ) -> str:
        weight, bias = fold_batch_norm(sd, conv, bn, eps)
        return self.conv(x, weight, bias, stride, pad, groups)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def relu6(self, x: str) -> str:
        return self.op("Clip", [x, self.const(np.array(0, np.float32)), self.const(np.array(6, np.float32))])

    def global_pool(self, x: str) -> str:
        return self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, name: str | None = None) -> str:
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


# --- MobileNetV2 (torchvision layout) ----------------------------------------------------------
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


def build_mobilenet_v2(
    sd: dict[str, np.ndarray], input_size: int, mean: Sequence[float], std: Sequence[float], bgr: bool = False
) -> onnx.ModelProto:
    """torchvision's MobileNetV2: 1280-d features after global pooling, 1000 ImageNet logits."""
    g = GraphBuilder()
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
    x = g.relu6(g.conv_bn(x, sd, "features.18.0", "features.18.1"))
    feats = g.output("Identity", [g.global_pool(x)], "features")
    g.linear(feats, sd["classifier.1.weight"], sd["classifier.1.bias"], name="logits")
    return g.model(input_size, [("features", 1280), ("logits", 1000)], "torchvision MobileNetV2, ImageNet weights")
