"""The backbone zoo: every ONNX graph against its independent numpy reference, ImageNet sanity on real
photos, user-supplied weights (resnet18, alexnet) from random torchvision-layout checkpoints, safe
loading of the numpy-pickle weights, INT8 quantization and combined graphs."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import onnx
import pytest

from aerial_assets.backbones.inference import make_session
from aerial_assets.backbones.nets.alexnet import build_alexnet
from aerial_assets.backbones.nets.combined import combine_models
from aerial_assets.backbones.nets.efficientnet_lite import build_efficientnet_lite0, build_efficientnet_lite2
from aerial_assets.backbones.networks import (
    IMAGENET_CATS,
    IMAGENET_ESPRESSO,
    WEIGHTS_DIR_SETTING,
    default_weights_dir,
    export_backbone,
    get_backbone,
    load_weights,
    offline_backbones,
    sample_photos,
    verify_against_reference,
)
from aerial_assets.backbones.numpy_weights import load_numpy_pickle
from aerial_assets.backbones.onnx_graph import level_blocks
from aerial_assets.backbones.torch_weights import save_state_dict_zip
from aerial_assets.backbones.zoo import LEVELS, MULTILEVEL_VARIANTS, export_entry, zoo_entry
from aerial_assets.errors import BackboneError

PACKAGED = ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "squeezenet1_1"]
FEATURE_DIMS = {"mobilenet_v2": 1280, "efficientnet_lite0": 1280, "efficientnet_lite1": 1280,
                "efficientnet_lite2": 1280, "squeezenet1_1": 512, "resnet18": 512, "alexnet": 4096}
TOLERANCE = 1e-4  # max absolute feature difference, ONNX (float32) vs numpy reference (float64)


@pytest.fixture(scope="module")
def exported():
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = export_backbone(get_backbone(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_backbone_matches_reference_and_knows_imagenet(name, exported):
    spec = get_backbone(name)
    result = verify_against_reference(spec, exported(name).model.SerializeToString(), load_weights(spec),
                                      sample_photos(spec.input_size))
    assert result["feature_dim"] == spec.feature_dim == FEATURE_DIMS[name]
    assert result["max_abs_diff"] < TOLERANCE, result
    chelsea, coffee, _ = result["onnx_top1"]
    assert chelsea in IMAGENET_CATS and coffee in IMAGENET_ESPRESSO, result


# the head's width plus the pooled outputs of the four blocks before the last one
MULTILEVEL_DIMS = {"mobilenet_v2_multilevel": 1280 + 96 + 160 + 160 + 160,
                   "efficientnet_lite0_multilevel": 1280 + 4 * 192,
                   "squeezenet1_1_multilevel": 512 + 256 + 384 + 384 + 512}


@pytest.mark.parametrize("name", MULTILEVEL_VARIANTS)
def test_multilevel_features_match_reference_and_extend_the_base_network(name, exported):
    entry = zoo_entry(name)
    spec = get_backbone(entry.parts[0])
    variant = export_entry(entry)
    photos = sample_photos(spec.input_size)
    result = verify_against_reference(spec, variant.model.SerializeToString(), load_weights(spec), photos,
                                      entry.levels)
    assert result["feature_dim"] == entry.feature_dim == variant.record["feature_dim"] == MULTILEVEL_DIMS[name]
    assert entry.levels == LEVELS == variant.record["levels"] and variant.record["base_backbone"] == spec.name
    # mid-network activations reach a few hundred: float32 agrees with float64 to a relative 1e-5, not 1e-4 absolute
    assert result["max_rel_diff"] < 1e-5, result
    chelsea, coffee, _ = result["onnx_top1"]
    assert chelsea in IMAGENET_CATS and coffee in IMAGENET_ESPRESSO, result
    outputs = ["features", "logits"]
    base = make_session(exported(spec.name).model.SerializeToString(), 2).run(outputs, {"image": photos})
    multi = make_session(variant.model.SerializeToString(), 2).run(outputs, {"image": photos})
    np.testing.assert_allclose(multi[0][:, :spec.feature_dim], base[0], rtol=0, atol=1e-5)  # the head comes first
    np.testing.assert_allclose(multi[1], base[1], rtol=0, atol=1e-4)  # the same logits
    assert np.abs(multi[0][:, spec.feature_dim:]).max() > 0  # the pooled blocks are real activations


def test_level_blocks_are_the_blocks_before_the_last():
    assert level_blocks([1, 2, 3, 4, 5], 2) == [3, 4] and level_blocks([1, 2, 3], 0) == []
    with pytest.raises(ValueError, match="levels must be in"):
        level_blocks([1, 2, 3], 3)


@pytest.mark.parametrize("name", PACKAGED)
def test_export_record_has_provenance(name, exported):
    record = exported(name).record
    spec = get_backbone(name)
    assert record["input_size"] == spec.input_size and record["feature_dim"] == spec.feature_dim
    assert len(record["weights_sha256"]) == 64 and record["weights_package"] and record["weights_license"]
    assert record["weights_user_supplied"] is False
    assert ("BGR" if spec.bgr else "RGB") in record["preprocessing"]


def test_efficientnet_lite_sizes_follow_their_published_inputs_and_refuse_other_weights():
    """Lite1 and Lite2 run at 240 and 260 px; a variant's architecture fed another variant's weights fails at export
    with the block that differs (Lite1 and Lite2 have the same depth but not the same widths)."""
    assert [get_backbone(n).input_size for n in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")] \
        == [224, 240, 260]
    lite1 = load_weights(get_backbone("efficientnet_lite1"))
    with pytest.raises(BackboneError, match="efficientnet_lite2: block 4 is depthwise"):
        build_efficientnet_lite2(lite1, 260, (127.0,) * 3, (128.0,) * 3)
    with pytest.raises(BackboneError, match="efficientnet_lite0: the weights hold 21 blocks, the architecture 16"):
        build_efficientnet_lite0(lite1, 224, (127.0,) * 3, (128.0,) * 3)


# --- user-supplied torchvision weights ----------------------------------------------------------
def _he(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / np.prod(shape[1:])))


def _bn(sd: dict, prefix: str, channels: int, rng: np.random.Generator, gamma: float = 1.0) -> None:
    """Non-trivial running statistics, so that batch-norm folding is really exercised."""
    sd[f"{prefix}.weight"] = rng.uniform(0.5, 1.0, channels).astype(np.float32) * np.float32(gamma)
    sd[f"{prefix}.bias"] = rng.normal(0, 0.1, channels).astype(np.float32)
    sd[f"{prefix}.running_mean"] = rng.normal(0, 0.1, channels).astype(np.float32)
    sd[f"{prefix}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    sd[f"{prefix}.num_batches_tracked"] = np.array(0, np.int64)


def random_resnet18(seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision resnet18 keys and shapes; He-normal convs, residual branches damped (gamma 0.5)."""
    rng, sd = np.random.default_rng(seed), {}
    sd["conv1.weight"] = _he(rng, 64, 3, 7, 7)
    _bn(sd, "bn1", 64, rng)
    inp = 64
    for layer, width in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            sd[f"{p}.conv1.weight"] = _he(rng, width, inp, 3, 3)
            _bn(sd, f"{p}.bn1", width, rng)
            sd[f"{p}.conv2.weight"] = _he(rng, width, width, 3, 3)
            _bn(sd, f"{p}.bn2", width, rng, gamma=0.5)
            if inp != width:
                sd[f"{p}.downsample.0.weight"] = _he(rng, width, inp, 1, 1)
                _bn(sd, f"{p}.downsample.1", width, rng)
            inp = width
    sd["fc.weight"], sd["fc.bias"] = _he(rng, 1000, 512), rng.normal(0, 0.05, 1000).astype(np.float32)
    return sd


def random_alexnet(seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision alexnet keys and shapes (61M parameters, 244 MB), He-normal."""
    rng, sd = np.random.default_rng(seed), {}
    for idx, (out, inp, k) in {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3),
                               10: (256, 256, 3)}.items():
        sd[f"features.{idx}.weight"] = _he(rng, out, inp, k, k)
        sd[f"features.{idx}.bias"] = rng.normal(0, 0.05, out).astype(np.float32)
    for idx, (out, inp) in {1: (4096, 9216), 4: (4096, 4096), 6: (1000, 4096)}.items():
        sd[f"classifier.{idx}.weight"] = _he(rng, out, inp)
        sd[f"classifier.{idx}.bias"] = rng.normal(0, 0.05, out).astype(np.float32)
    return sd


@pytest.mark.parametrize("name, make", [("resnet18", random_resnet18), ("alexnet", random_alexnet)])
def test_user_supplied_backbone_matches_reference(name, make, tmp_path):
    spec = get_backbone(name)
    (tmp_path / spec.weights_file).write_bytes(save_state_dict_zip(make()))
    exported = export_backbone(spec, weights_dir=str(tmp_path))
    result = verify_against_reference(spec, exported.model.SerializeToString(), load_weights(spec, str(tmp_path)),
                                      sample_photos(224))
    assert result["feature_dim"] == spec.feature_dim == FEATURE_DIMS[name]
    assert result["max_abs_feature"] > 1.0  # activations of a sane scale, so the absolute bound means something
    assert result["max_abs_diff"] < TOLERANCE, result
    record = exported.record
    assert record["weights_user_supplied"] is True and record["weights_url"].endswith(spec.weights_file)
    assert record["weights_sha256_matches_published"] is False  # random weights, not torchvision's file
    assert "BSD-3-Clause" in record["weights_license"]


@pytest.mark.parametrize("name", ["resnet18", "alexnet"])
def test_missing_user_weights_say_what_to_download_and_where(name, tmp_path, monkeypatch):
    spec = get_backbone(name)
    with pytest.raises(BackboneError) as info:
        export_backbone(spec, weights_dir=str(tmp_path))
    message = str(info.value)
    assert spec.weights_file in message and f"https://download.pytorch.org/models/{spec.weights_file}" in message
    assert str(tmp_path / spec.weights_file) in message and WEIGHTS_DIR_SETTING in message
    monkeypatch.setenv(WEIGHTS_DIR_SETTING, str(tmp_path / "elsewhere"))
    with pytest.raises(BackboneError, match="elsewhere"):
        spec.weights_path(default_weights_dir(os.environ))


def test_offline_backbones_are_the_packaged_ones():
    assert offline_backbones() == PACKAGED


def test_weights_folder_defaults_under_the_data_root():
    assert default_weights_dir({"AERIAL_DATA_ROOT": "/data"}) == "/data/weights"
    assert default_weights_dir({"AERIAL_DATA_ROOT": "/data", WEIGHTS_DIR_SETTING: "/w"}) == "/w"


def test_alexnet_refuses_sizes_where_adaptive_pool_is_not_an_identity():
    with pytest.raises(BackboneError, match="6x6"):
        build_alexnet({}, 256, (0, 0, 0), (1, 1, 1))


# --- numpy-pickle weights are read without running code -----------------------------------------
class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_numpy_pickle_refuses_other_globals():
    with pytest.raises(BackboneError, match="refusing"):
        load_numpy_pickle(pickle.dumps({"conv1": [_Evil(), np.zeros(2)]}))
    with pytest.raises(BackboneError, match="non-numeric"):
        load_numpy_pickle(pickle.dumps({"conv1": [np.array([1, "a"], dtype=object)]}))
    arrays = load_numpy_pickle(pickle.dumps({"conv1": [np.ones((1, 1, 3, 2), np.float32), np.zeros(2)]}))
    assert arrays["conv1"][0].shape == (1, 1, 3, 2)


def test_squeezenet_weights_are_keras_hwio():
    sd = load_weights(get_backbone("squeezenet1_1"))
    assert sd["conv1/kernel"].shape == (3, 3, 3, 64) and sd["conv10/kernel"].shape == (1, 1, 512, 1000)


# --- INT8 quantization ----------------------------------------------------------------------------
def test_int8_mobilenet_keeps_features_and_classes(exported, caplog):
    from aerial_assets.backbones.quantization import quantize_int8

    caplog.set_level(logging.ERROR)  # onnxruntime nags about its optional pre-processing step
    photos = sample_photos(224)
    calibration = np.concatenate([photos, photos[:, ::-1], photos[:, :, ::-1]])
    float_bytes = exported("mobilenet_v2").model.SerializeToString()
    int8_bytes = quantize_int8(float_bytes, calibration)
    quantized = onnx.load_from_string(int8_bytes)
    assert quantized.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [n.op_type for n in quantized.graph.node if n.op_type != "DequantizeLinear"][:4] == [
        "Cast", "Transpose", "Sub", "Mul"]  # preprocessing stays float
    # every convolution runs quantized; the ImageNet head (5 MB of the 14) stays float
    convs = [n for n in quantized.graph.node if n.op_type == "Conv"]
    produced_by_dq = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert convs and all(n.input[0] in produced_by_dq and n.input[1] in produced_by_dq for n in convs)
    head = [n for n in quantized.graph.node if "logits" in n.output]
    assert head[0].op_type == "Gemm" and head[0].input[1] not in produced_by_dq
    assert len(int8_bytes) < len(float_bytes) * 0.6
    features, logits = make_session(float_bytes, 2).run(["features", "logits"], {"image": photos})
    q_features, q_logits = make_session(int8_bytes, 2).run(["features", "logits"], {"image": photos})
    cosine = (features * q_features).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(q_features, axis=1)
    assert cosine.min() > 0.95, cosine
    assert int(np.argmax(q_logits[0])) in IMAGENET_CATS and int(np.argmax(q_logits[1])) in IMAGENET_ESPRESSO


# --- several backbones in one graph ---------------------------------------------------------------
def test_combined_features_are_the_parts_features_concatenated(exported):
    squeezenet = get_backbone("squeezenet1_1")
    mobilenet = exported("mobilenet_v2").model
    squeezenet_224 = squeezenet.build(load_weights(squeezenet), 224, squeezenet.mean, squeezenet.std, squeezenet.bgr)
    photos = sample_photos(224)
    combined = combine_models([mobilenet, squeezenet_224], 224)
    session = make_session(combined.SerializeToString(), 2)
    assert [o.name for o in session.get_outputs()] == ["features"]
    features = session.run(["features"], {"image": photos})[0]
    parts = [make_session(m.SerializeToString(), 2).run(["features"], {"image": photos})[0]
             for m in (mobilenet, squeezenet_224)]
    assert features.shape == (3, 1280 + 512)
    np.testing.assert_allclose(features, np.concatenate(parts, axis=1), rtol=0, atol=1e-5)


def test_combined_part_of_another_size_is_resized_in_the_graph(exported):
    mobilenet, squeezenet_227 = exported("mobilenet_v2").model, exported("squeezenet1_1").model
    combined = combine_models([mobilenet, squeezenet_227], 224)
    features = make_session(combined.SerializeToString(), 2).run(["features"], {"image": sample_photos(224)})[0]
    alone = make_session(squeezenet_227.SerializeToString(), 2).run(["features"], {"image": sample_photos(227)})[0]
    part = features[:, 1280:]
    cosine = (part * alone).sum(1) / np.linalg.norm(part, axis=1) / np.linalg.norm(alone, axis=1)
    assert cosine.min() > 0.97  # in-graph bilinear resize vs Pillow's: close, not identical


def test_one_rule_for_the_weights_folder_in_the_resource_and_outside():
    from aerial_assets.backbones.networks import weights_dir_for
    from aerial_assets.defs.resources import BackboneWeightsResource
    from aerial_assets.storage.layout import Layout

    for root, setting in (("/data", ""), ("/data", "/w"), ("az://c/p", ""), ("az://c/p", "/w")):
        env = {"AERIAL_DATA_ROOT": root, **({WEIGHTS_DIR_SETTING: setting} if setting else {})}
        assert BackboneWeightsResource(weights_dir=setting).resolve(Layout(root)) == default_weights_dir(env) \
            == weights_dir_for(root, setting)
    assert weights_dir_for("az://c/p") == os.path.abspath(".aerial_weights")
