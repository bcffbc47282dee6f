import pickle

import numpy as np
import pytest

from aerial_assets.backbones.networks import get_backbone
from aerial_assets.backbones.torch_weights import load_state_dict, save_state_dict_zip
from aerial_assets.errors import BackboneError


def test_zip_format_round_trip_keeps_shapes_dtypes_and_values():
    rng = np.random.default_rng(0)
    state = {"conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
             "bn.num_batches_tracked": np.array(7, np.int64), "fc.bias": np.arange(5, dtype=np.float64)}
    loaded = load_state_dict(save_state_dict_zip(state))
    assert list(loaded) == list(state)
    for name, value in state.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)


def test_legacy_torchvision_mobilenet_file_loads():
    path = get_backbone("mobilenet_v2").weights_path()
    state = load_state_dict(open(path, "rb").read())
    assert len(state) == 314
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["classifier.1.weight"].shape == (1000, 1280)


def test_file_naming_other_globals_is_refused():
    evil = pickle.dumps({"x": print}, protocol=2)  # names builtins.print
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("archive/data.pkl", evil)
    with pytest.raises(BackboneError, match="refusing"):
        load_state_dict(buf.getvalue())


def test_garbage_is_a_clear_error():
    with pytest.raises(BackboneError):
        load_state_dict(b"not a checkpoint at all")
