"""A backbone graph in the form SynapseML's ``ONNXModel`` runs it on JVM executors (``AERIAL_FEATURIZE_ENGINE``).

SynapseML 1.1's ``ONNXModel`` bundles onnxruntime-java 1.8.1, which loads ONNX IR <= 7 and opset <= 14 only, and
builds its input tensors from Spark columns of FLOAT, DOUBLE, BOOL, INT8, INT16, INT32, INT64 or STRING values (no
UINT8), one array per row, converted value by value into the model input's shape. That conversion, not the network,
is what the JVM engine spends most of its time on (measured: a graph that only averages its input ran 128 tiles/s
with one int8 per pixel value, 146 with int32 words, 292 with int64 words), so the tile goes as few values as
possible: its uint8 pixels, 8 to a word, as a flat int64 array (:func:`pack`). The project's graphs take ``image``:
uint8 ``[N, S, S, 3]`` at opset 17 (:mod:`aerial_assets.backbones.onnx_graph`); this module rewrites a graph, its
weights untouched, to take ``pixels``: int64 ``[N, ceil(S*S*3 / 8)]`` and unpack them in the graph (shift, modulo
256, reshape) into the ``image`` the rest of the graph reads. Its only output is ``features``. Every operator the
zoo's graphs use means the same at opset 14 as at 17 for the types they use (``Shape`` with ``start``/``end``, which
opset 14 lacks, is written as ``Shape`` and ``Slice``); a graph with one that does not is refused by the ONNX
checker, in one line (:class:`UnsupportedGraphError`). No Spark, no Dagster.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

JVM_OPSET = 14
JVM_IR_VERSION = 7
INPUT = "pixels"
OUTPUT = "features"
_IMAGE = "image"
_WORD = 8  # pixel values per int64


class UnsupportedGraphError(ValueError):
    """The graph cannot be run by SynapseML's onnxruntime (an operator or a shape it does not take)."""


def words(size: int) -> int:
    """int64 words of one ``size`` x ``size`` RGB tile."""
    return -(-size * size * 3 // _WORD)


def pack(images: np.ndarray) -> np.ndarray:
    """``[N, S, S, 3]`` uint8 -> ``[N, words(S)]`` int64: each tile's values in order, 8 to a little-endian word,
    zero-padded to whole words (the rewritten graph unpacks them)."""
    flat = images.reshape(len(images), -1)
    padded = np.zeros((len(images), words(images.shape[1]) * _WORD), np.uint8)
    padded[:, :flat.shape[1]] = flat
    return padded.view("<i8")


def image_size(model_bytes: bytes) -> int:
    """The square input size ``S`` of a project graph (its ``image`` input is ``[N, S, S, 3]``)."""
    return _image_dims(onnx.load_from_string(model_bytes))[0]


def _image_dims(model: onnx.ModelProto) -> list[int]:
    image = next((i for i in model.graph.input if i.name == _IMAGE), None)
    if image is None or image.type.tensor_type.elem_type != TensorProto.UINT8:
        raise UnsupportedGraphError("the graph has no uint8 'image' input")
    dims = [d.dim_value for d in image.type.tensor_type.shape.dim[1:]]
    if len(dims) != 3 or not all(dims) or dims[0] != dims[1]:
        raise UnsupportedGraphError(f"the graph's 'image' input is not [N, S, S, 3]: {dims}")
    return dims


def for_jvm(model_bytes: bytes) -> bytes:
    """The graph with a flat int64 input of packed pixels and the ``features`` output only, at IR 7 and opset 14."""
    model = onnx.load_from_string(model_bytes)
    graph, dims = model.graph, _image_dims(model)
    if domains := {i.domain for i in model.opset_import} - {"", "ai.onnx"}:
        raise UnsupportedGraphError(f"the graph uses operator domains {sorted(domains)} besides ONNX's own")

    n_values, n_words = math.prod(dims), words(dims[0])
    consts = {name: numpy_helper.from_array(value, name) for name, value in {
        "jvm_axis2": np.array([2], np.int64),
        "jvm_shifts": np.arange(0, 64, 8, dtype=np.uint64),
        "jvm_256": np.array(256, np.uint64),
        "jvm_flat": np.array([-1, n_words * _WORD], np.int64),
        "jvm_start": np.array([0], np.int64), "jvm_end": np.array([n_values], np.int64),
        "jvm_axis1": np.array([1], np.int64),
        "jvm_image_shape": np.array([-1, *dims], np.int64)}.items()}
    prologue = [
        helper.make_node("Cast", [INPUT], ["jvm_words"], to=TensorProto.UINT64),
        helper.make_node("Unsqueeze", ["jvm_words", "jvm_axis2"], ["jvm_words3"]),
        helper.make_node("BitShift", ["jvm_words3", "jvm_shifts"], ["jvm_shifted"], direction="RIGHT"),
        helper.make_node("Mod", ["jvm_shifted", "jvm_256"], ["jvm_bytes64"]),
        helper.make_node("Cast", ["jvm_bytes64"], ["jvm_bytes"], to=TensorProto.UINT8),
        helper.make_node("Reshape", ["jvm_bytes", "jvm_flat"], ["jvm_padded"]),
        helper.make_node("Slice", ["jvm_padded", "jvm_start", "jvm_end", "jvm_axis1"], ["jvm_values"]),
        helper.make_node("Reshape", ["jvm_values", "jvm_image_shape"], ["jvm_image"]),
    ]
    nodes, extra = [], []
    for node in graph.node:
        renamed = onnx.NodeProto()
        renamed.CopyFrom(node)
        renamed.input[:] = ["jvm_image" if name == _IMAGE else name for name in node.input]
        nodes.extend(_shape_at_opset_14(renamed, extra))
    outputs = [o for o in graph.output if o.name == OUTPUT]
    if not outputs:
        raise UnsupportedGraphError("the graph has no 'features' output")
    new_graph = helper.make_graph(
        prologue + _needed(nodes, OUTPUT), graph.name,
        [helper.make_tensor_value_info(INPUT, TensorProto.INT64, ["N", n_words])], outputs,
        [*graph.initializer, *consts.values(), *extra])
    converted = helper.make_model(new_graph, opset_imports=[helper.make_opsetid("", JVM_OPSET)],
                                  doc_string=model.doc_string)
    converted.ir_version = JVM_IR_VERSION
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsupportedGraphError(f"not valid at opset {JVM_OPSET} / IR {JVM_IR_VERSION}: {first}") from exc
    _drop_unused_initializers(converted.graph)
    return converted.SerializeToString()


def _shape_at_opset_14(node: onnx.NodeProto, initializers: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """``Shape`` with ``start``/``end`` (opset 15; the combined graphs' in-graph resize reads N and C with it) as
    ``Shape`` then ``Slice``, which opset 14 has; any other node as it is."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type != "Shape" or not attrs:
        return [node]
    full, name = f"{node.output[0]}_full", node.output[0]
    starts = numpy_helper.from_array(np.array([attrs.get("start", 0)], np.int64), f"{name}_starts")
    ends = numpy_helper.from_array(np.array([attrs.get("end", np.iinfo(np.int64).max)], np.int64), f"{name}_ends")
    initializers.extend([starts, ends])
    return [helper.make_node("Shape", [node.input[0]], [full]),
            helper.make_node("Slice", [full, starts.name, ends.name], [name])]


def _needed(nodes: list[onnx.NodeProto], output: str) -> list[onnx.NodeProto]:
    """The nodes ``output`` depends on, in their order (the ``logits`` head and other outputs' nodes dropped)."""
    wanted, keep = {output}, []
    for node in reversed(nodes):
        if wanted & set(node.output):
            keep.append(node)
            wanted.update(node.input)
    return keep[::-1]


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
