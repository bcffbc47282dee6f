import numpy as np
import pytest

from aerial_assets.backbones.inference import make_session
from aerial_assets.backbones.networks import IMAGENET_CATS, export_backbone, get_backbone, sample_photos
from aerial_assets.errors import ConfigurationError


@pytest.fixture(scope="module")
def mobilenet():
    return export_backbone(get_backbone("mobilenet_v2"))


def test_mobilenet_v2_recognises_real_photos(mobilenet):
    session = make_session(mobilenet.model.SerializeToString(), threads=2)
    batch = sample_photos(224)[:2]  # chelsea, coffee (vendored from scikit-image)
    features, logits = session.run(["features", "logits"], {"image": batch})
    assert features.shape == (2, 1280)
    top1 = np.argmax(logits, axis=1)
    assert int(top1[0]) in IMAGENET_CATS  # Egyptian/tabby cat
    assert int(top1[1]) == 967  # espresso


def test_record_has_provenance(mobilenet):
    record = mobilenet.record
    assert record["feature_dim"] == 1280 and record["input_size"] == 224
    assert record["weights_sha256"].startswith("b0353104")  # torchvision names files by their hash prefix
    assert "RGB" in record["preprocessing"]


def test_unknown_backbone_lists_valid_ones():
    with pytest.raises(ConfigurationError, match="valid backbones: .*mobilenet_v2"):
        get_backbone("vgg99")
