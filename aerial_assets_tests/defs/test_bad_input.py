"""Bad training input: quarantined with a reason, converted and counted, or a clear error."""

import io
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from dagster import AssetKey, materialize
from PIL import Image

from aerial_assets.defs.assets.tiles import labeled_tiles, labeled_tiles_quarantine
from aerial_assets.defs.definitions import build_defs
from aerial_assets.errors import TrainingDataError
from aerial_assets_tests.conftest import env_for


def _materialize(root, tiles, raise_on_error=True):
    resources = build_defs(env_for(root, tiles)).resources
    return materialize([labeled_tiles, labeled_tiles_quarantine], resources=resources, raise_on_error=raise_on_error)


@pytest.fixture()
def messy_tiles(tiny_tiles, tmp_path):
    root = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, root)
    good = (root / "Forest" / "forest_000.png").read_bytes()
    (root / "Forest" / "truncated.png").write_bytes(good[: len(good) // 3])
    (root / "Forest" / "empty.jpg").write_bytes(b"")
    (root / "Forest" / "notes.txt").write_text("field notes")
    (root / "Forest" / "fake.jpg").write_bytes(b"<html>not a jpeg</html>")
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(root / "Barren" / "gray.png")
    Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(root / "Shrub" / "rgba.png")
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(0).integers(0, 255, (64, 64, 4), dtype=np.uint8),
                     photometric="minisblack", planarconfig="contig")
    (root / "Developed" / "rgbn.tif").write_bytes(buf.getvalue())
    return root


def test_bad_files_are_quarantined_with_reasons_and_conversions_counted(spark, messy_tiles, tmp_path):
    data_root = tmp_path / "data"
    result = _materialize(data_root, messy_tiles)
    catalog = pd.read_parquet(data_root / "labeled_tiles" / "catalog.parquet").set_index("tile_id")
    quarantined = catalog[catalog["status"] == "quarantined"]
    assert sorted(quarantined.index) == ["Forest/empty.jpg", "Forest/fake.jpg", "Forest/notes.txt",
                                         "Forest/truncated.png"]
    assert quarantined.loc["Forest/empty.jpg", "reason"] == "empty file"
    assert "not an image" in quarantined.loc["Forest/fake.jpg", "reason"]
    assert "truncated" in quarantined.loc["Forest/truncated.png", "reason"].lower()
    assert catalog.loc["Developed/rgbn.tif", "status"] == "ok"
    assert "first 3 kept" in catalog.loc["Developed/rgbn.tif", "notes"]
    assert "mode L to RGB" in catalog.loc["Barren/gray.png", "notes"]
    meta = result.asset_materializations_for_node("labeled_tiles")[0].metadata
    assert meta["n_quarantined"].value == 4
    assert meta["n_mode_converted"].value == 3
    check = result.get_asset_check_evaluations()[0]
    assert check.asset_key == AssetKey("labeled_tiles") and not check.passed
    assert "Forest/truncated.png" in {r.data["tile_id"] for r in check.metadata["files"].records}
    csv = pd.read_csv(data_root / "labeled_tiles" / "quarantine.csv")
    assert len(csv) == 4


def test_missing_folder_is_a_clear_error(spark, tmp_path):
    with pytest.raises(TrainingDataError, match="training folder .*nowhere not found: set AERIAL_TRAINING_TILES"):
        _materialize(tmp_path / "data", tmp_path / "nowhere")


def test_empty_class_folder_is_a_clear_error(spark, tiny_tiles, tmp_path):
    root = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, root)
    (root / "Water").mkdir()
    with pytest.raises(TrainingDataError, match=r"class folder Water/ is empty"):
        _materialize(tmp_path / "data", root)


def test_single_class_is_a_clear_error(spark, tiny_tiles, tmp_path):
    root = tmp_path / "tiles"
    shutil.copytree(tiny_tiles / "Forest", root / "Forest")
    with pytest.raises(TrainingDataError, match="needs at least two"):
        _materialize(tmp_path / "data", root)


def test_failed_run_leaves_previous_catalog_intact(spark, tiny_tiles, tmp_path):
    data_root = tmp_path / "data"
    _materialize(data_root, tiny_tiles)
    before = (data_root / "labeled_tiles" / "catalog.parquet").read_bytes()
    with pytest.raises(TrainingDataError):
        _materialize(data_root, tmp_path / "nowhere")
    assert (data_root / "labeled_tiles" / "catalog.parquet").read_bytes() == before


def test_real_aid_jpegs_are_catalogued_resized_and_featurized(spark, tmp_path):
    """A small real subset of AID (150 px JPEG): every file usable, every one counted as resized."""
    from aerial_assets.defs.assets.backbones import backbone_models
    from aerial_assets.defs.assets.features import tile_features
    from aerial_assets_tests.conftest import shared_dataset

    aid = shared_dataset("aid")
    root = tmp_path / "aid_subset"
    for cls in ("Forest", "Farmland", "DenseResidential"):
        (root / cls).mkdir(parents=True)
        for src in sorted((aid / cls).glob("*.jpg"))[:6]:
            shutil.copy(src, root / cls / src.name)
    data_root = tmp_path / "data"
    result = _materialize(data_root, root)
    meta = result.asset_materializations_for_node("labeled_tiles")[0].metadata
    assert meta["n_quarantined"].value == 0 and meta["n_resized"].value == 18
    resources = build_defs(env_for(data_root, root)).resources
    features = materialize([backbone_models, tile_features], resources=resources, partition_key="mobilenet_v2")
    fmeta = features.asset_materializations_for_node("tile_features")[0].metadata
    assert fmeta["dagster/row_count"].value == 18 and fmeta["feature_dim"].value == 1280
    frame = spark.read.parquet(str(data_root / "tile_features" / "mobilenet_v2" / "features.parquet")).toPandas()
    assert frame["features"].map(len).eq(1280).all()
