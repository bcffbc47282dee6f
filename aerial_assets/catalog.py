"""Catalog a labelled folder tree: which files, which class, which split, and what is wrong with them.

Two layouts are understood: ``<class>/<image>`` (split here, deterministically and stratified) and
``train/<class>/<image>`` + ``test/<class>/<image>`` (the original sample's layout, split kept).
A validation split is always carved from the training files, so that model selection never looks
at the test split. Pure pandas, no Dagster import.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from aerial_assets.errors import TrainingDataError
from aerial_assets.imaging import IMAGE_EXTENSIONS
from aerial_assets.storage import FileEntry

SPLITS = ("train", "validation", "test")
CATALOG_COLUMNS = [
    "tile_id", "uri", "label", "split", "bytes", "width", "height", "mode", "status", "reason", "notes",
]
OK, QUARANTINED = "ok", "quarantined"
EXCLUDED = "excluded"  # a training tile left out by sample_frac: kept in the catalog, not featurized


@dataclass(frozen=True)
class SplitSettings:
    """How tiles are split. Fractions are of each class, so every class is in every split."""

    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    sample_frac: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise TrainingDataError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise TrainingDataError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not 0.0 < self.sample_frac <= 1.0:
            raise TrainingDataError(f"sample_frac must be in (0, 1], got {self.sample_frac}")


def has_split_folders(top_dirs: Iterable[str]) -> bool:
    """True for the ``train/`` + ``test/`` layout."""
    names = {d.lower() for d in top_dirs}
    return {"train", "test"} <= names


def list_tiles(entries: Iterable[FileEntry], split_layout: bool) -> pd.DataFrame:
    """One row per file; files that cannot be training tiles are quarantined here with their reason."""
    rows = []
    for entry in entries:
        parts = entry.relative_path.split("/")
        split, reason = "", ""
        if split_layout:
            split = parts[0].lower() if parts else ""
            parts = parts[1:]
            if split not in ("train", "test", "validation"):
                reason = f"outside train/ and test/ (in {split!r})"
        label = parts[0] if len(parts) >= 2 else ""
        if not reason and len(parts) < 2:
            reason = "not inside a class folder"
        elif not reason and len(parts) > 2:
            reason = "nested deeper than <class>/<image>"
        elif not reason and not entry.relative_path.lower().endswith(IMAGE_EXTENSIONS):
            reason = f"not an image file (extension not one of {', '.join(IMAGE_EXTENSIONS)})"
        elif not reason and entry.size == 0:
            reason = "empty file"
        rows.append(
            {
                "tile_id": entry.relative_path,
                "uri": entry.uri,
                "label": label,
                "split": split,
                "bytes": int(entry.size),
                "width": 0,
                "height": 0,
                "mode": "",
                "status": QUARANTINED if reason else OK,
                "reason": reason,
                "notes": "",
            }
        )
    return pd.DataFrame(rows, columns=CATALOG_COLUMNS)


def check_class_folders(class_dirs: dict[str, list[str]], files: pd.DataFrame) -> None:
    """Fail on empty class folders and on fewer than two classes, saying how to fix it."""
    for split, dirs in class_dirs.items():
        where = f"{split}/" if split else ""
        for name in dirs:
            has_file = ((files["label"] == name) & (files["split"].isin([split]) if split else True)).any()
            if not has_file:
                raise TrainingDataError(
                    f"class folder {where}{name}/ is empty: put its images in it or delete the folder"
                )
    labels = sorted(set(files.loc[files["status"] == OK, "label"]))
    if len(labels) < 2:
        raise TrainingDataError(
            f"found {len(labels)} class(es) with usable images ({', '.join(labels) or 'none'}); a classifier "
            "needs at least two: lay the folder out as <class>/<image> with one folder per class"
        )


def _rank(tile_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{tile_id}".encode()).hexdigest()


def _take(count: int, fraction: float, keep_one_back: bool) -> int:
    """How many of ``count`` go to a held-out split: at least one, never all when one must stay."""
    if count <= 0 or fraction <= 0:
        return 0
    n = max(1, round(count * fraction))
    if keep_one_back:
        n = min(n, count - 1)
    return max(n, 0)


def assign_splits(catalog: pd.DataFrame, settings: SplitSettings) -> pd.DataFrame:
    """Give every usable tile a split: stratified, deterministic in (seed, tile id), order-free.

    Tiles already marked ``test`` (train/test layout) keep it; validation is carved from train; with
    ``sample_frac`` < 1 the training tiles left out are marked ``excluded`` (kept and counted).
    """
    settings.check()
    out = catalog.copy()
    ok = out["status"] == OK
    out["_rank"] = out["tile_id"].map(lambda t: _rank(t, settings.seed))
    preset = ok & out["split"].isin(["train", "test", "validation"])
    if not preset.any():
        out.loc[ok, "split"] = "train"
        for _, group in out[ok].groupby("label"):
            if len(group) < 2:
                raise TrainingDataError(
                    f"class {group['label'].iloc[0]!r} has {len(group)} usable image; each class needs at least "
                    "two (one to train on, one to test): add images or remove the class folder"
                )
            ordered = group.sort_values("_rank").index
            out.loc[ordered[: _take(len(group), settings.test_fraction, True)], "split"] = "test"
    train = ok & (out["split"] == "train")
    for _, group in out[train].groupby("label"):
        ordered = group.sort_values("_rank").index
        n_val = _take(len(group), settings.validation_fraction, True) if len(group) >= 3 else 0
        out.loc[ordered[len(ordered) - n_val:] if n_val else [], "split"] = "validation"
        if settings.sample_frac < 1.0:
            rest = ordered[: len(ordered) - n_val]
            keep = max(1, round(len(rest) * settings.sample_frac))
            out.loc[rest[keep:], "split"] = EXCLUDED
    return out.drop(columns="_rank")


def check_splits(catalog: pd.DataFrame) -> None:
    """Every class must be trained on and tested: say which class is missing where."""
    ok = catalog[catalog["status"] == OK]
    train_labels = set(ok.loc[ok["split"] == "train", "label"])
    test_labels = set(ok.loc[ok["split"] == "test", "label"])
    all_labels = set(ok["label"])
    if missing := sorted(all_labels - test_labels):
        raise TrainingDataError(
            f"class(es) {', '.join(missing)} have no usable image in the test split: add images to "
            "test/<class>/ (or use the <class>/<image> layout and let the split be made for you)"
        )
    if missing := sorted(all_labels - train_labels):
        raise TrainingDataError(
            f"class(es) {', '.join(missing)} have no usable image in the train split: add images to train/<class>/"
        )


def counts_table(catalog: pd.DataFrame) -> str:
    """Markdown table of usable tiles per class and split (quarantined ones in their own column)."""
    ok = catalog[catalog["status"] == OK]
    table = pd.crosstab(ok["label"], ok["split"]) if len(ok) else pd.DataFrame()
    for split in (*SPLITS, EXCLUDED):
        if split not in table.columns and (split != EXCLUDED):
            table[split] = 0
    cols = [c for c in (*SPLITS, EXCLUDED) if c in table.columns]
    table = table[cols]
    bad = catalog[catalog["status"] != OK].groupby("label").size()
    table["quarantined"] = bad.reindex(table.index).fillna(0).astype(int)
    table.loc["**total**"] = table.sum()
    header = "| class | " + " | ".join(table.columns) + " |"
    sep = "|---|" + "---:|" * len(table.columns)
    lines = [header, sep]
    for label, row in table.iterrows():
        lines.append(f"| {label} | " + " | ".join(str(int(v)) for v in row.values) + " |")
    return "\n".join(lines)


INSPECT_SCHEMA = "tile_id string, width int, height int, mode string, status string, reason string, notes string"


def inspect_frames(expected_size: int):
    """The ``mapInPandas`` function that fully decodes each file (runs on executors)."""
    from aerial_assets.imaging import ImageDecodeError, inspect
    from aerial_assets.storage import storage_for

    def run(frames):
        for frame in frames:
            rows = []
            for tile_id, uri in zip(frame["tile_id"], frame["uri"], strict=True):
                try:
                    info = inspect(storage_for(uri).read_bytes(uri), expected_size)
                    rows.append((tile_id, info.width, info.height, info.mode, OK, "", "; ".join(info.notes)))
                except (ImageDecodeError, OSError) as exc:
                    rows.append((tile_id, 0, 0, "", QUARANTINED, str(exc) or type(exc).__name__, ""))
            yield pd.DataFrame(rows, columns=["tile_id", "width", "height", "mode", "status", "reason", "notes"])

    return run


def merge_inspection(listed: pd.DataFrame, inspected: pd.DataFrame) -> pd.DataFrame:
    """Put the executors' findings back into the listing (files quarantined at listing keep their reason)."""
    out = listed.set_index("tile_id")
    found = inspected.set_index("tile_id")
    cols = ["width", "height", "mode", "status", "reason", "notes"]
    out.loc[found.index, cols] = found[cols]
    out["width"] = out["width"].astype(int)
    out["height"] = out["height"].astype(int)
    return out.reset_index()[CATALOG_COLUMNS]


def conversion_counts(catalog: pd.DataFrame) -> dict[str, int]:
    """How many usable tiles needed resizing, a mode change or a dtype scaling."""
    notes = catalog.loc[catalog["status"] == OK, "notes"].fillna("")
    return {
        "resized": int(notes.str.contains("resized").sum()),
        "mode_converted": int(notes.str.contains(r"to RGB|first 3 kept|scaled to uint8", regex=True).sum()),
    }
