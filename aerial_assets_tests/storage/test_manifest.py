"""Manifests: a reader refuses a dataset or model that is not what its writer recorded, in one line naming the
asset partition to re-materialize."""

from pathlib import Path

import pytest

from aerial_assets.storage.core import LocalStorage
from aerial_assets.storage.manifest import IntegrityError, Manifest, verify, write_manifest


def _dataset(folder: Path) -> None:
    (folder / "features.parquet").mkdir(parents=True)
    for i in range(3):
        (folder / "features.parquet" / f"part-{i}.parquet").write_bytes(bytes(100 + i))
    (folder / "features.parquet" / ".part-0.parquet.crc").write_bytes(b"c")  # Hadoop's, never uploaded
    (folder / "model.onnx").write_bytes(b"onnx" * 10)


def test_a_dataset_that_matches_its_manifest_reads(tmp_path):
    store = LocalStorage()
    _dataset(tmp_path)
    manifest = write_manifest(store, str(tmp_path), ["features.parquet", "model.onnx"], checksums=True)
    assert sorted(manifest.datasets["features.parquet"].files) == [f"part-{i}.parquet" for i in range(3)]
    assert manifest.datasets["model.onnx"].files == {"": 40}
    assert Manifest.read(store, str(tmp_path)) == manifest
    verify(store, str(tmp_path), "features.parquet", "tile_features[x]")
    verify(store, str(tmp_path), "model.onnx", "champion_model")
    (tmp_path / "features.parquet" / ".part-0.parquet.crc").unlink()  # hidden files are not part of the data
    verify(store, str(tmp_path), "features.parquet", "tile_features[x]")


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "features.parquet" / "part-1.parquet").unlink(), "1 file\\(s\\) missing: part-1.parquet"),
    (lambda d: (d / "features.parquet" / "part-2.parquet").write_bytes(b"short"),
     "1 file\\(s\\) of another size \\(truncated\\?\\): part-2.parquet"),
    (lambda d: (d / "features.parquet" / "part-9.parquet").write_bytes(b"x"), "1 file\\(s\\) not written by it"),
])
def test_a_missing_truncated_or_foreign_part_is_refused_naming_what_to_rematerialize(tmp_path, damage, message):
    store = LocalStorage()
    _dataset(tmp_path)
    write_manifest(store, str(tmp_path), ["features.parquet"])
    damage(tmp_path)
    with pytest.raises(IntegrityError, match=message + ".*re-materialize tile_features\\[mobilenet_v2\\]"):
        verify(store, str(tmp_path), "features.parquet", "tile_features[mobilenet_v2]")


def test_a_changed_model_of_the_same_size_is_caught_by_its_checksum(tmp_path):
    store = LocalStorage()
    _dataset(tmp_path)
    write_manifest(store, str(tmp_path), ["model.onnx"], checksums=True)
    (tmp_path / "model.onnx").write_bytes(b"ONNX" * 10)
    with pytest.raises(IntegrityError, match="changed since written: model.onnx.*re-materialize champion_model"):
        verify(store, str(tmp_path), "model.onnx", "champion_model")


def test_an_output_from_before_manifests_is_read_unchecked(tmp_path):
    _dataset(tmp_path)
    verify(LocalStorage(), str(tmp_path), "features.parquet", "tile_features[x]")
