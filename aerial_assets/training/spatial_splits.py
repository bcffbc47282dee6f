"""Spatial train/validation/test splits: neighbouring tiles never sit on both sides. No Dagster import.

Aerial tiles cut from one raster are spatially autocorrelated: a tile and its neighbour share fields, roofs and
the flight's light, so a random split puts near-copies of test tiles into training and overstates accuracy.
When the tiles' positions are known (a ``tile_positions.csv`` at the root of the training folder, which
``raster_labeled_tiles`` writes for the tiles it cuts, and which a user may supply for any folder), the split
assigns whole groups: square blocks of the map (``blocks``, ``block_size_m`` on a side, per source raster) or
whole source rasters (``raster``). Groups are ordered by a seeded hash (deterministic, order-free) and taken
into test, then validation, while a class still lacks its share; the rest train. A class that cannot get test
and training tiles this way is an error that says to use smaller blocks.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import numpy as np
import pandas as pd

from aerial_assets.errors import TrainingDataError
from aerial_assets.safety import csv_files
from aerial_assets.storage.core import join

POSITIONS_FILE = "tile_positions.csv"
Strategy = Literal["auto", "stratified", "blocks", "raster"]
POSITION_COLUMNS = ["filename", "left", "bottom", "right", "top"]


def parse_positions(text: str, source: str) -> pd.DataFrame:
    """``filename`` (``<class>/<image>`` relative to the training folder), ``left, bottom, right, top`` (in
    the tiles' projected CRS, metres), optional ``source`` (the raster a tile was cut from). Rejects a bad row
    with its line number."""
    try:
        frame = csv_files.read_csv(text, dtype={"filename": str, "source": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise TrainingDataError(f"{source}: not a readable CSV ({exc})") from exc
    missing = [c for c in POSITION_COLUMNS if c not in frame.columns]
    if missing:
        raise TrainingDataError(f"{source}: missing column(s) {', '.join(missing)}; expected "
                                f"{', '.join(POSITION_COLUMNS)} (and optionally source)")
    if "source" not in frame.columns:
        frame["source"] = ""
    frame["source"] = frame["source"].fillna("")
    for col in POSITION_COLUMNS[1:]:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(float))
        if bad.any():
            line = int(np.flatnonzero(bad)[0]) + 2
            raise TrainingDataError(f"{source} line {line}: {col} is not a finite number ({frame[col].iloc[line - 2]!r})")
        frame[col] = values.astype(float)
    dup = frame["filename"].duplicated()
    if dup.any():
        line = int(np.flatnonzero(dup.to_numpy())[0]) + 2
        raise TrainingDataError(f"{source} line {line}: {frame['filename'].iloc[line - 2]!r} is listed twice")
    return frame[[*POSITION_COLUMNS, "source"]]


def groups_of(positions: pd.DataFrame, strategy: Literal["blocks", "raster"], block_size_m: float) -> pd.Series:
    """The spatial group of every listed tile (by filename): its block of the map, or its source raster."""
    if strategy == "raster":
        if (positions["source"] == "").any():
            raise TrainingDataError("split_strategy 'raster' needs a 'source' for every tile in "
                                    f"{POSITIONS_FILE}; use 'blocks' instead")
        return pd.Series(positions["source"].to_numpy(), index=positions["filename"])
    if not block_size_m > 0:
        raise TrainingDataError(f"block_size_m must be positive, got {block_size_m}")
    cx = (positions["left"] + positions["right"]) / 2
    cy = (positions["bottom"] + positions["top"]) / 2
    keys = [f"{s}|{math.floor(x / block_size_m)}|{math.floor(y / block_size_m)}"
            for s, x, y in zip(positions["source"], cx, cy, strict=True)]
    return pd.Series(keys, index=positions["filename"])


def _rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:group:{key}".encode()).hexdigest()


def assign_group_splits(usable: pd.DataFrame, groups: pd.Series, test_fraction: float,
                        validation_fraction: float, seed: int) -> pd.Series:
    """The split of every usable tile (``tile_id``, ``label``), taking whole groups.

    Groups in seeded-hash order go to test while some class of the group is still short of its test share
    (``test_fraction`` of its tiles), then to validation likewise (``validation_fraction`` of the rest), else to
    train. A group never leaves training if that would take a class's last tiles out of it: with few large
    blocks, a block taken for one short class could otherwise empty another class's training set. Raises
    :class:`TrainingDataError` when a tile has no position or a class ends up without test or training tiles."""
    group = usable["tile_id"].map(groups)
    if group.isna().any():
        missing = usable.loc[group.isna(), "tile_id"].head(3).tolist()
        raise TrainingDataError(f"{int(group.isna().sum())} usable tile(s) have no row in {POSITIONS_FILE} (e.g. "
                                f"{', '.join(missing)}): a spatial split needs every tile's position; add them or "
                                "set split_strategy: stratified")
    frame = usable.assign(_group=group.to_numpy())
    totals = frame.groupby("label").size()
    want_test = (totals * test_fraction).round().clip(lower=1)
    want_val = ((totals - want_test) * validation_fraction).round()
    got_test = pd.Series(0, index=totals.index)
    got_val = pd.Series(0, index=totals.index)
    split_of: dict[str, str] = {}
    for key in sorted(frame["_group"].unique(), key=lambda k: _rank(str(k), seed)):
        counts = frame.loc[frame["_group"] == key].groupby("label").size()
        classes = counts.index
        # tiles of these classes that would still be left for training if this group left it
        keeps_train = bool(((totals[classes] - got_test[classes] - got_val[classes] - counts) > 0).all())
        if keeps_train and ((want_test[classes] - got_test[classes]) > 0).any():
            split_of[key] = "test"
            got_test[classes] += counts
        elif keeps_train and ((want_val[classes] - got_val[classes]) > 0).any():
            split_of[key] = "validation"
            got_val[classes] += counts
        else:
            split_of[key] = "train"
    splits = frame["_group"].map(split_of)
    for split in ("test", "train"):
        have = set(frame.loc[splits == split, "label"])
        if missing := sorted(set(totals.index) - have):
            raise TrainingDataError(
                f"with whole spatial groups, class(es) {', '.join(missing)} get no {split} tile: their tiles sit in "
                "too few blocks; lower block_size_m, add tiles of that class, or set split_strategy: stratified")
    return pd.Series(splits.to_numpy(), index=usable.index)


def training_gsd(declared: float, table: pd.DataFrame, root: str, positions: pd.DataFrame | None
                  ) -> tuple[float | None, str]:
    """Metres per pixel of the training tiles, and how it is known: declared (``AERIAL_TRAINING_GSD_M``) wins;
    else the median of the tiles' widths in metres (``tile_positions.csv``) over their widths in pixels (the
    catalog, as stored); else unknown. The out-of-distribution check compares it with each county's imagery."""
    if declared > 0:
        return float(declared), "declared (AERIAL_TRAINING_GSD_M)"
    if positions is None or positions.empty:
        return None, "unknown"
    uris = positions["filename"].map(lambda name: join(root, name))
    widths = table.set_index("uri")["width"].reindex(uris).to_numpy(dtype=float)
    metres = (positions["right"] - positions["left"]).to_numpy(dtype=float)
    usable = np.isfinite(widths) & (widths > 0) & (metres > 0)
    if not usable.any():
        return None, "unknown"
    return round(float(np.median(metres[usable] / widths[usable])), 4), f"{POSITIONS_FILE} ({int(usable.sum())} tiles)"
