"""The graphs as SynapseML's ONNXModel takes them (``AERIAL_FEATURIZE_ENGINE=synapseml``): every zoo graph rewritten
to IR 7 / opset 14 with a flat int8 input computes the very features of the original (checked here in Python's
onnxruntime; the JVM's own run is checked in aerial_assets_tests/spark/test_synapseml.py), and the step that puts the
views of a tile back together keeps every tile whole across Arrow batches. No Spark."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper

from aerial_assets.backbones.jvm_graph import (
    JVM_IR_VERSION,
    JVM_OPSET,
    UnsupportedGraphError,
    for_jvm,
    image_size,
    pack,
    words,
)
from aerial_assets.backbones.networks import offline_backbones
from aerial_assets.backbones.zoo import export_entry, zoo_entry
from aerial_assets.imagery import demo_data
from aerial_assets.imagery.decode import load_tile
from aerial_assets.spark.synapseml_featurization import _averaged

_SESSION = {"providers": ["CPUExecutionProvider"]}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> list[bytes]:
    root = tmp_path_factory.mktemp("tiles")
    demo_data.write_training_tiles(str(root), per_class=1, size=96, seed=4, fmt="png")
    return [p.read_bytes() for p in sorted(root.rglob("*.png"))]


def test_pack_puts_8_values_in_a_word_in_order_and_pads_the_last():
    images = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)  # 27 values a tile: 4 words, 5 pad bytes
    packed = pack(images)
    assert packed.dtype == np.int64 and packed.shape == (2, words(3)) == (2, 4)
    as_bytes = packed.astype("<i8").view(np.uint8).reshape(2, -1)
    assert np.array_equal(as_bytes[:, :27], images.reshape(2, -1)) and not as_bytes[:, 27:].any()
    assert np.array_equal(pack(np.full((1, 2, 2, 3), 255, np.uint8))[0, 0], -1)  # all bits set: negative words


@pytest.mark.parametrize("name", [*offline_backbones(), "mobilenet_v2+efficientnet_lite2", "squeezenet1_1_multilevel",
                                  "mobilenet_v2_int8"])
def test_every_zoo_graph_runs_at_opset_14_on_packed_pixels_with_the_same_features(name, tiles):
    size = zoo_entry(name).input_size
    images = np.stack([load_tile(t, size) for t in tiles])
    original = export_entry(zoo_entry(name), calibration_images=images).model.SerializeToString()
    assert image_size(original) == size
    converted = onnx.load_from_string(for_jvm(original))
    assert converted.ir_version == JVM_IR_VERSION and [i.version for i in converted.opset_import] == [JVM_OPSET]
    (pixels,) = converted.graph.input
    assert pixels.type.tensor_type.elem_type == TensorProto.INT64
    assert [d.dim_value for d in pixels.type.tensor_type.shape.dim[1:]] == [words(size)]
    assert [o.name for o in converted.graph.output] == ["features"]
    expected = ort.InferenceSession(original, **_SESSION).run(["features"], {"image": images})[0]
    got = ort.InferenceSession(converted.SerializeToString(), **_SESSION).run(
        ["features"], {"pixels": pack(images)})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_a_graph_it_cannot_run_is_refused_in_one_line():
    def graph(input_type: int, domain: str = "") -> bytes:
        node = helper.make_node("Identity", ["image"], ["features"])
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", input_type, ["N", 4, 4, 3])],
                              [helper.make_tensor_value_info("features", input_type, ["N", 4, 4, 3])])
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        return helper.make_model(g, opset_imports=opsets).SerializeToString()

    with pytest.raises(UnsupportedGraphError, match="no uint8 'image' input"):
        for_jvm(graph(TensorProto.FLOAT))
    with pytest.raises(UnsupportedGraphError, match=r"domains \['com.microsoft'\]"):
        for_jvm(graph(TensorProto.UINT8, "com.microsoft"))


def _view_rows(tile: str, views: int, status: str = "ok") -> pd.DataFrame:
    n = views if status == "ok" else 1
    return pd.DataFrame({
        "tile_id": [tile] * n, "label": ["a"] * n, "split": ["train"] * n, "status": [status] * n,
        "reason": ["" if status == "ok" else "cannot decode"] * n, "jvm_view": list(range(n))[::-1],
        "jvm_features": [np.array([v, 10 * v], np.float32) for v in range(n)][::-1]})


def test_views_of_a_tile_split_across_batches_are_averaged_as_one_tile():
    rows = pd.concat([_view_rows("t1", 4), _view_rows("bad", 4, "quarantined"), _view_rows("t2", 4)],
                     ignore_index=True)
    frames = [rows.iloc[:3], rows.iloc[3:7], rows.iloc[7:]]  # t1 and t2 each cut between two batches
    out = pd.concat(_averaged(iter(frames), ["tile_id", "label", "split"], 4, keep_views=True), ignore_index=True)
    assert out["tile_id"].tolist() == ["t1", "bad", "t2"]
    np.testing.assert_allclose(out.loc[0, "features"], [1.5, 15.0])
    np.testing.assert_allclose(out.loc[0, "view_features"], [0, 0, 1, 10, 2, 20, 3, 30])  # view after view
    assert out.loc[1, "features"] is None and out.loc[1, "reason"] == "cannot decode"


def test_a_tile_missing_a_view_fails_the_task_instead_of_averaging_fewer():
    rows = _view_rows("t1", 4).iloc[1:]
    with pytest.raises(RuntimeError, match="tile t1: views"):
        list(_averaged(iter([rows]), ["tile_id", "label", "split"], 4, keep_views=False))
