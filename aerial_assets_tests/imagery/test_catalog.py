import pandas as pd
import pytest

from aerial_assets.errors import TrainingDataError
from aerial_assets.imagery.catalog import (
    EXCLUDED,
    SplitSettings,
    assign_splits,
    check_splits,
    counts_table,
    find_duplicates,
    list_tiles,
)
from aerial_assets.storage.core import FileEntry
from aerial_assets.tables import TileStatus


def _entries(counts: dict[str, int], prefix: str = "") -> list[FileEntry]:
    return [FileEntry(uri=f"/x/{prefix}{c}/{i}.png", relative_path=f"{prefix}{c}/{i}.png", size=10)
            for c, n in counts.items() for i in range(n)]


def test_split_is_stratified_deterministic_and_order_free():
    listed = list_tiles(_entries({"Forest": 50, "Developed": 20}), split_layout=False)
    first = assign_splits(listed, SplitSettings(test_fraction=0.2, validation_fraction=0.1, seed=0))
    shuffled = assign_splits(listed.sample(frac=1, random_state=3), SplitSettings(test_fraction=0.2, validation_fraction=0.1, seed=0))
    assert first.set_index("tile_id")["split"].equals(shuffled.set_index("tile_id")["split"].loc[first["tile_id"]])
    counts = first.groupby(["label", "split"]).size()
    assert counts["Forest", "test"] == 10 and counts["Developed", "test"] == 4
    assert counts["Forest", "validation"] == 4 and counts["Developed", "validation"] == 2
    other_seed = assign_splits(listed, SplitSettings(test_fraction=0.2, validation_fraction=0.1, seed=1))
    assert not other_seed["split"].equals(first["split"])


def test_byte_identical_copies_land_in_one_split_and_other_tiles_do_not_move():
    """AID holds one image twice (Industrial/industrial_203.jpg = industrial_205.jpg): a random split must not put
    one copy in train and the other in test, which the blocking leakage check would then refuse."""
    listed = list_tiles(_entries({"Forest": 50, "Developed": 20}), split_layout=False)
    listed["sha256"] = [f"{i:064x}" for i in range(len(listed))]
    before = assign_splits(listed, SplitSettings(test_fraction=0.5, validation_fraction=0.1, seed=0))
    for seed in range(6):  # several seeds: cuts fall at different places relative to the copies
        copied = listed.copy()
        forest = copied.index[copied["label"] == "Forest"]
        for a, b in zip(forest[:20:2], forest[1:20:2], strict=True):  # 10 pairs of copies
            copied.loc[b, "sha256"] = copied.loc[a, "sha256"]
        copied.loc[forest[20:23], "sha256"] = copied.loc[forest[20], "sha256"]  # and one triple
        table = assign_splits(copied, SplitSettings(test_fraction=0.5, validation_fraction=0.1, seed=seed))
        assert table.groupby("sha256")["split"].nunique().max() == 1, seed
        assert find_duplicates(table).across_splits.empty
        check_splits(table)
        counts = table.groupby(["label", "split"]).size()
        assert abs(counts["Forest", "test"] - 25) <= 2 and counts["Developed", "test"] == 10
    # tiles without copies keep the split they had (same seed): only the copies' ranks changed
    copied_ids = set(copied.loc[forest[:23], "tile_id"])
    developed = before["label"] == "Developed"
    assert before[developed]["split"].tolist() == assign_splits(copied, SplitSettings(test_fraction=0.5, validation_fraction=0.1, seed=0))[
        developed]["split"].tolist()
    assert len(copied_ids) == 23


def test_train_test_layout_keeps_test_and_carves_validation_from_train():
    entries = _entries({"A": 10, "B": 10}, "train/") + _entries({"A": 3, "B": 3}, "test/")
    table = assign_splits(list_tiles(entries, split_layout=True), SplitSettings())
    assert (table[table["tile_id"].str.startswith("test/")]["split"] == "test").all()
    train_side = table[table["tile_id"].str.startswith("train/")]
    assert set(train_side["split"]) == {"train", "validation"}
    check_splits(table)


def test_sample_frac_marks_left_out_training_tiles_excluded_not_dropped():
    listed = list_tiles(_entries({"A": 40, "B": 40}), split_layout=False)
    table = assign_splits(listed, SplitSettings(test_fraction=0.25, validation_fraction=0.0, sample_frac=0.5))
    assert len(table) == 80
    assert (table["split"] == EXCLUDED).sum() == 30 and (table["split"] == "train").sum() == 30
    assert "excluded" in counts_table(table)


def test_class_absent_from_test_split_names_class_and_fix():
    entries = _entries({"A": 5, "B": 5}, "train/") + _entries({"A": 2}, "test/")
    table = assign_splits(list_tiles(entries, split_layout=True), SplitSettings())
    with pytest.raises(TrainingDataError, match=r"B have no usable image in the test split.*test/<class>/"):
        check_splits(table)


def test_single_image_class_cannot_be_split():
    listed = list_tiles(_entries({"A": 5, "B": 1}), split_layout=False)
    with pytest.raises(TrainingDataError, match="class 'B' has 1 usable image"):
        assign_splits(listed, SplitSettings())


def test_stray_files_are_quarantined_with_reason():
    entries = [FileEntry("/x/readme.txt", "readme.txt", 5), FileEntry("/x/A/notes.txt", "A/notes.txt", 5),
               FileEntry("/x/A/deep/x.png", "A/deep/x.png", 5), FileEntry("/x/A/empty.png", "A/empty.png", 0),
               FileEntry("/x/A/good.png", "A/good.png", 5)]
    table = list_tiles(entries, split_layout=False).set_index("tile_id")
    assert table.loc["readme.txt", "reason"] == "not inside a class folder"
    assert table.loc["A/notes.txt", "reason"].startswith("not an image file")
    assert table.loc["A/deep/x.png", "reason"].startswith("nested deeper")
    assert table.loc["A/empty.png", "reason"] == "empty file"
    assert table.loc["A/good.png", "status"] == TileStatus.OK
    assert (table["status"] == TileStatus.QUARANTINED).sum() == 4
    assert isinstance(table, pd.DataFrame)
