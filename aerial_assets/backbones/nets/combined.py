"""Several backbones as one ONNX graph: one uint8 ``image`` input, ``features`` concatenated.

Running the parts as one session decodes and ships each tile once and lets onnxruntime schedule all
parts together. Each part keeps its own preprocessing; a part built for another input size gets the
image resized inside the graph (Cast to float, bilinear Resize of H and W, round and clip back to
uint8), so it sees uint8 pixels exactly as it would stand-alone. Note that this in-graph resize is
not Pillow's (no antialiasing when shrinking), so such a part's features differ slightly from
feeding it images resized by :func:`aerial_assets.imagery.decode.resize_square`.

Output: only ``features`` (``[N, sum of D]``, in the order of ``models``); logits are dropped, since
each part's classifier means something different and none is needed downstream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.compose import add_prefix

from aerial_assets.backbones.onnx_graph import OPSET


def _square_size(model: onnx.ModelProto) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[1].dim_value)


def _feature_width(model: onnx.ModelProto) -> int:
    for out in model.graph.output:
        if out.name == "features":
            return int(out.type.tensor_type.shape.dim[1].dim_value)
    raise ValueError("every part must have a 'features' output")


def combine_models(models: Sequence[onnx.ModelProto], input_size: int) -> onnx.ModelProto:
    """One graph with input ``image`` uint8 ``[N, input_size, input_size, 3]`` and output ``features``."""
    if not models:
        raise ValueError("combine_models needs at least one model")
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    parts: list[str] = []
    width = 0
    for idx, model in enumerate(models):
        prefix = f"part{idx}/"
        part = add_prefix(model, prefix)
        size = _square_size(model)
        part_image = f"{prefix}image"
        if size == input_size:
            nodes.append(helper.make_node("Identity", ["image"], [part_image]))
        else:
            sizes = numpy_helper.from_array(np.array([size, size], np.int64), f"{prefix}resize_sizes")
            lo = numpy_helper.from_array(np.array(0, np.float32), f"{prefix}resize_lo")
            hi = numpy_helper.from_array(np.array(255, np.float32), f"{prefix}resize_hi")
            shape = f"{prefix}resize_shape"
            initializers += [sizes, lo, hi]
            nodes += [
                helper.make_node("Cast", ["image"], [f"{prefix}resize_f"], to=TensorProto.FLOAT),
                helper.make_node("Shape", ["image"], [f"{prefix}resize_n"], start=0, end=1),
                helper.make_node("Shape", ["image"], [f"{prefix}resize_c"], start=3, end=4),
                helper.make_node("Concat", [f"{prefix}resize_n", sizes.name, f"{prefix}resize_c"], [shape], axis=0),
                helper.make_node(
                    "Resize", [f"{prefix}resize_f", "", "", shape], [f"{prefix}resized"], mode="linear",
                    coordinate_transformation_mode="half_pixel",
                ),
                helper.make_node("Round", [f"{prefix}resized"], [f"{prefix}rounded"]),
                helper.make_node("Clip", [f"{prefix}rounded", lo.name, hi.name], [f"{prefix}clipped"]),
                helper.make_node("Cast", [f"{prefix}clipped"], [part_image], to=TensorProto.UINT8),
            ]
        nodes += list(part.graph.node)
        initializers += list(part.graph.initializer)
        parts.append(f"{prefix}features")
        width += _feature_width(model)
    nodes.append(helper.make_node("Concat", parts, ["features"], axis=1))
    graph = helper.make_graph(
        nodes,
        "combined_feature_extractor",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", input_size, input_size, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
        initializers,
    )
    opset = max([OPSET] + [imp.version for m in models for imp in m.opset_import if imp.domain in ("", "ai.onnx")])
    combined = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                 doc_string="combined: " + " + ".join(m.doc_string for m in models))
    combined.ir_version = max(m.ir_version for m in models)
    onnx.checker.check_model(combined)
    return combined
