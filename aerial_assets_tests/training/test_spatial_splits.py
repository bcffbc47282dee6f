"""Spatial splits: whole blocks (or whole rasters) go to one split, so neighbouring tiles never straddle it."""

import shutil

import numpy as np
import pandas as pd
import pytest
from dagster import materialize

from aerial_assets.errors import TrainingDataError
from aerial_assets.training.spatial_splits import POSITIONS_FILE, assign_group_splits, groups_of, parse_positions
from aerial_assets_tests.conftest import env_for

CLASSES = ["Forest", "Developed", "Cultivated"]


def _grid(rows: int = 12, cols: int = 12, tile: float = 224.0) -> pd.DataFrame:
    """A field of tiles whose class changes in bands of 4 columns (every block holds a mix of at most 2)."""
    records = []
    for r in range(rows):
        for c in range(cols):
            label = CLASSES[(c // 4) % len(CLASSES)]
            records.append({"filename": f"{label}/t_{r}_{c}.png", "left": 500_000 + c * tile,
                            "bottom": 4_700_000 - (r + 1) * tile, "right": 500_000 + (c + 1) * tile,
                            "top": 4_700_000 - r * tile, "source": "a.tif" if r < rows // 2 else "b.tif",
                            "label": label})
    return pd.DataFrame(records)


def test_blocks_go_whole_to_one_split_and_every_class_is_tested_and_trained():
    grid = _grid()
    positions = grid.drop(columns="label")
    groups = groups_of(positions, "blocks", 3 * 224.0)
    usable = pd.DataFrame({"tile_id": grid["filename"], "label": grid["label"]})
    splits = assign_group_splits(usable, groups, 0.2, 0.1, seed=0)
    frame = usable.assign(split=splits, group=usable["tile_id"].map(groups))
    assert frame.groupby("group")["split"].nunique().max() == 1  # no block is cut by the split
    assert set(frame["split"]) == {"train", "validation", "test"}
    for label in CLASSES:
        got = set(frame.loc[frame["label"] == label, "split"])
        assert {"train", "test"} <= got, label
    share = (frame["split"] == "test").mean()
    assert 0.12 <= share <= 0.4  # about test_fraction, in whole blocks
    again = assign_group_splits(usable.sample(frac=1, random_state=3), groups, 0.2, 0.1, seed=0)
    assert again.sort_index().equals(splits.sort_index())  # deterministic, whatever the row order
    assert not assign_group_splits(usable, groups, 0.2, 0.1, seed=1).equals(splits)  # the seed matters


def test_a_rare_class_keeps_training_tiles_whatever_the_group_order():
    """A rare class (Shrub) shares its only two blocks with a common one (Forest). Taking the second block to test
    for Forest's sake would leave Shrub nothing to train on; whatever the seeded order, one block of the two goes to
    test and the other stays in training."""
    usable = pd.DataFrame({"tile_id": [f"t{i}" for i in range(24)],
                           "label": ["Shrub", "Forest", "Shrub", "Forest"] + ["Forest"] * 10 + ["Developed"] * 10})
    groups = pd.Series(["g0", "g0", "g1", "g1", *[f"f{i // 2}" for i in range(10)], *[f"d{i // 2}" for i in range(10)]],
                       index=usable["tile_id"])
    for seed in range(40):
        frame = usable.assign(split=assign_group_splits(usable, groups, 0.2, 0.1, seed=seed))
        shrub = sorted(frame.loc[frame["label"] == "Shrub", "split"])
        assert shrub == ["test", "train"], (seed, shrub)
        for label in ("Forest", "Developed"):
            assert {"train", "test"} <= set(frame.loc[frame["label"] == label, "split"]), (seed, label)


def test_raster_strategy_keeps_each_source_raster_in_one_split():
    grid = _grid(rows=8)
    positions = grid.drop(columns="label")
    extra = _grid(rows=8).assign(filename=lambda f: f["filename"].str.replace("t_", "u_"),
                                 source=lambda f: np.where(f["source"] == "a.tif", "c.tif", "d.tif"))
    positions = pd.concat([positions, extra.drop(columns="label")])
    usable = pd.DataFrame({"tile_id": positions["filename"],
                           "label": positions["filename"].str.split("/").str[0]})
    splits = assign_group_splits(usable, groups_of(positions, "raster", 0), 0.25, 0.0, seed=0)
    frame = usable.assign(split=splits.to_numpy(), source=positions["source"].to_numpy())
    assert frame.groupby("source")["split"].nunique().max() == 1
    assert set(frame["split"]) == {"train", "test"}


def test_too_large_blocks_or_missing_positions_are_clear_errors():
    grid = _grid()
    usable = pd.DataFrame({"tile_id": grid["filename"], "label": grid["label"]})
    one_block = groups_of(grid.drop(columns="label").assign(source="a.tif"), "blocks", 1e7)  # one raster, one block
    with pytest.raises(TrainingDataError, match="lower block_size_m"):
        assign_group_splits(usable, one_block, 0.2, 0.1, seed=0)
    partial = groups_of(grid.drop(columns="label").iloc[5:], "blocks", 672.0)
    with pytest.raises(TrainingDataError, match=f"5 usable tile\\(s\\) have no row in {POSITIONS_FILE}"):
        assign_group_splits(usable, partial, 0.2, 0.1, seed=0)
    with pytest.raises(TrainingDataError, match="line 3: left is not a finite number"):
        parse_positions("filename,left,bottom,right,top\na/1.png,0,0,1,1\na/2.png,x,0,1,1\n", "p.csv")
    with pytest.raises(TrainingDataError, match="missing column\\(s\\) top"):
        parse_positions("filename,left,bottom,right\n", "p.csv")
    with pytest.raises(TrainingDataError, match="'raster' needs a 'source'"):
        groups_of(parse_positions("filename,left,bottom,right,top\na/1.png,0,0,1,1\n", "p.csv"), "raster", 1)


def test_labeled_tiles_splits_by_blocks_when_the_folder_has_tile_positions(spark, tiny_tiles, tmp_path):
    """The catalog of a folder with ``tile_positions.csv``: blocks by default, the positions file is not a tile,
    and every block's tiles share one split."""
    from aerial_assets.defs.assets.tiles import labeled_tiles
    from aerial_assets.defs.definitions import build_defs

    folder = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    rows = []
    for i, name in enumerate(files):  # tiles laid on a 8-wide grid, in file order
        r, c = divmod(i, 8)
        rows.append({"filename": name, "left": c * 224.0, "bottom": -(r + 1) * 224.0, "right": (c + 1) * 224.0,
                     "top": -r * 224.0})
    pd.DataFrame(rows).to_csv(folder / POSITIONS_FILE, index=False)
    root = tmp_path / "root"
    result = materialize([labeled_tiles], resources=build_defs(env_for(root, folder)).resources,
                         run_config={"ops": {"labeled_tiles": {"config": {"block_size_m": 448.0}}}})
    assert result.success
    meta = result.asset_materializations_for_node("labeled_tiles")[0].metadata
    assert meta["split_strategy"].value == "blocks" and meta["spatial_groups"].value == 12
    assert meta["n_quarantined"].value == 0  # tile_positions.csv is not listed as a bad file
    catalog = pd.read_parquet(root / "labeled_tiles" / "catalog.parquet").set_index("tile_id")
    assert len(catalog) == len(files)
    blocks = {name: (int(p["left"] // 448), int(p["bottom"] // 448)) for name, p in
              pd.DataFrame(rows).set_index("filename").iterrows()}
    by_block = catalog.assign(block=catalog.index.map(blocks)).groupby("block")["split"]
    assert by_block.apply(lambda s: set(s) - {"excluded"}).map(len).max() == 1
