import pytest

from aerial_assets.errors import StorageError
from aerial_assets.storage import LocalStorage, join, storage_for


def test_atomic_dir_replaces_whole_folder(tmp_path):
    store = LocalStorage()
    target = str(tmp_path / "out")
    with store.atomic_dir(target) as tmp:
        store.write_text(join(tmp, "a.txt"), "first")
    with store.atomic_dir(target) as tmp:
        store.write_text(join(tmp, "b.txt"), "second")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_write_keeps_previous_output_and_leaves_no_temp(tmp_path):
    store = LocalStorage()
    target = str(tmp_path / "out")
    with store.atomic_dir(target) as tmp:
        store.write_text(join(tmp, "good.txt"), "complete")
    with pytest.raises(RuntimeError):
        with store.atomic_dir(target) as tmp:
            store.write_text(join(tmp, "half.txt"), "partial")
            raise RuntimeError("crash mid-write")
    assert (tmp_path / "out" / "good.txt").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_bytes_is_atomic_and_listing_skips_hidden(tmp_path):
    store = LocalStorage()
    store.write_bytes(str(tmp_path / "x" / "f.bin"), b"123")
    (tmp_path / "x" / ".hidden").write_text("no")
    assert [e.relative_path for e in store.list_files(str(tmp_path))] == ["x/f.bin"]
    assert store.read_bytes(str(tmp_path / "x" / "f.bin")) == b"123"


def test_unknown_scheme_and_missing_file_are_clear():
    with pytest.raises(StorageError, match="unsupported storage URI"):
        storage_for("gopher://nowhere/x")
    with pytest.raises(StorageError, match="no file at"):
        LocalStorage().read_bytes("/nonexistent/file")
