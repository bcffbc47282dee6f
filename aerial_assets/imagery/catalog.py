"""Catalog a labelled folder tree: which files, which class, which split, and what is wrong with them.

Two layouts are understood: ``<class>/<image>`` (split here, deterministically and stratified) and
``train/<class>/<image>`` + ``test/<class>/<image>`` (the original sample's layout, split kept).
A validation split is always carved from the training files, so that model selection never looks
at the test split. Every readable file gets the sha256 of its bytes, computed where the executors read it
anyway, so that copies of one image across splits (leakage) or under two classes are found without a
second pass over the data. Pure pandas, no Dagster import.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from aerial_assets.errors import TrainingDataError
from aerial_assets.imagery.decode import IMAGE_EXTENSIONS
from aerial_assets.safety.quarantine import reasons_text
from aerial_assets.storage.core import FileEntry, is_local, local_path
from aerial_assets.tables import INSPECTION, SPLITS, TileStatus

CATALOG_COLUMNS = [
    "tile_id", "uri", "label", "split", "bytes", "width", "height", "mode", "status", "reason", "notes", "sha256",
]

EXCLUDED = "excluded"  # a training tile left out by sample_frac: kept in the catalog, not featurized


class SplitSettings(BaseModel):
    """How tiles are split. Fractions are of each class, so every class is in every split. The Dagster config of
    ``labeled_tiles`` extends this model, so an out-of-range fraction fails when the step starts."""

    model_config = ConfigDict(frozen=True)

    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    sample_frac: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0


def has_split_folders(top_dirs: Iterable[str]) -> bool:
    """True for the ``train/`` + ``test/`` layout."""
    names = {d.lower() for d in top_dirs}
    return {"train", "test"} <= names


EXTERNAL_LINKS_SETTING = "follow_external_links"


def _unreadable_reason(uri: str) -> str:
    """Why a listed entry (``size`` -1) cannot be read: said precisely, since the fix differs per cause."""
    if not is_local(uri):
        return "cannot be read (not a regular file)"
    path = local_path(uri)
    if os.path.isdir(path):
        target = os.readlink(path) if os.path.islink(path) else path
        return f"symlink loop: the folder link to {target!r} leads back to a folder above it (not followed)"
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symlink loop ({exc.strerror}): the link resolves to itself"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"dangling symlink: its target {os.readlink(path)!r} does not exist"
        return f"cannot be read: {exc.strerror or type(exc).__name__}"
    return "not a regular file (a FIFO, socket or device): not read"


def _external_link_reason(uri: str, real_root: str) -> str:
    """Non-empty when ``uri`` resolves (through symlinks) to a file outside the training folder."""
    real = os.path.realpath(local_path(uri))
    if os.path.commonpath([real, real_root]) == real_root:
        return ""
    return (f"symlink to {real}, outside the training folder: not followed by default (set "
            f"{EXTERNAL_LINKS_SETTING}: true in the labeled_tiles config to use files linked from elsewhere)")


def list_tiles(entries: Iterable[FileEntry], split_layout: bool, root: str = "",
               follow_external_links: bool = False) -> pd.DataFrame:
    """One row per file; files that cannot be training tiles are quarantined here with their reason.

    ``root``: the listed folder. When it is local, entries whose symlinks lead outside it are quarantined
    unless ``follow_external_links`` (a link out of the folder is easy to make by accident and makes the
    catalog depend on files nobody sees in it). Entries listed with ``size`` -1 (dangling links, link
    loops, FIFOs) are quarantined with their cause instead of failing the listing.
    """
    real_root = os.path.realpath(local_path(root)) if root and is_local(root) else ""
    rows = []
    for entry in entries:
        parts = entry.relative_path.split("/")
        split = ""
        if split_layout:
            split, parts = (parts[0].lower(), parts[1:]) if parts else ("", parts)
        label = parts[0] if len(parts) >= 2 else ""
        reason = ""
        if entry.size < 0:
            reason = _unreadable_reason(entry.uri)
        elif real_root and not follow_external_links:
            reason = _external_link_reason(entry.uri, real_root)
        if reason:
            pass
        elif split_layout and split not in ("train", "test", "validation"):
            reason = f"outside train/ and test/ (in {split!r})"
        elif len(parts) < 2:
            reason = "not inside a class folder"
        elif len(parts) > 2:
            reason = "nested deeper than <class>/<image>"
        elif not entry.relative_path.lower().endswith(IMAGE_EXTENSIONS):
            reason = f"not an image file (extension not one of {', '.join(IMAGE_EXTENSIONS)})"
        elif entry.size == 0:
            reason = "empty file"
        rows.append(
            {
                "tile_id": entry.relative_path,
                "uri": entry.uri,
                "label": label,
                "split": split,
                "bytes": max(int(entry.size), 0),
                "width": 0,
                "height": 0,
                "mode": "",
                "status": (TileStatus.QUARANTINED if reason else TileStatus.OK).value,
                "reason": reason,
                "notes": "",
                "sha256": "",
            }
        )
    return pd.DataFrame(rows, columns=CATALOG_COLUMNS)


def check_class_folders(class_dirs: dict[str, list[str]], files: pd.DataFrame) -> None:
    """Fail on empty class folders and on fewer than two classes, saying how to fix it.

    A folder that was itself listed as a quarantined entry (a folder link looping back above itself) is
    not a class folder: it is reported in the quarantine, not as an empty class."""
    listed_as_entry = set(files.loc[files["status"] == TileStatus.QUARANTINED, "tile_id"].str.lower())
    for split, dirs in class_dirs.items():
        where = f"{split}/" if split else ""
        for name in dirs:
            if f"{where}{name}".lower() in listed_as_entry:
                continue
            has_file = ((files["label"] == name) & (files["split"].isin([split]) if split else True)).any()
            if not has_file:
                raise TrainingDataError(
                    f"class folder {where}{name}/ is empty: put its images in it or delete the folder"
                )
    labels = sorted(set(files.loc[files["status"] == TileStatus.OK, "label"]))
    if len(labels) < 2:
        reasons = files.loc[files["status"] == TileStatus.QUARANTINED, "reason"].astype(str)
        external = int(reasons.str.contains(EXTERNAL_LINKS_SETTING, regex=False).sum())
        quarantined = ""
        if external:
            quarantined += (f"; {external} file(s) were quarantined as symlinks leading out of the folder (set "
                            f"{EXTERNAL_LINKS_SETTING}: true in the labeled_tiles config to use them)")
        others = reasons[~reasons.str.contains(EXTERNAL_LINKS_SETTING, regex=False)]
        if len(others):
            quarantined += f"; {len(others)} other file(s) were quarantined ({reasons_text(others)})"
        raise TrainingDataError(
            f"found {len(labels)} class(es) with usable images ({', '.join(labels) or 'none'}){quarantined}; a "
            "classifier needs at least two: lay the folder out as <class>/<image> with one folder per class"
        )


def _rank(tile_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{tile_id}".encode()).hexdigest()


def _copy_ranks(catalog: pd.DataFrame, ok: pd.Series, seed: int) -> pd.Series:
    """Each tile's place in the split order: its own id's rank, except that byte-identical copies (same
    ``sha256``) all take the rank of the group's first tile id, so they sort next to each other and
    :func:`_group_cut` can keep them on one side of every cut. A dataset with a copied image (AID has one)
    would otherwise put one copy in train and the other in test: leakage, which ``labeled_tiles_leakage``
    blocks. Tiles without copies keep exactly the rank they always had, so no other split moves."""
    key = catalog["tile_id"].copy()
    if "sha256" in catalog.columns:
        hashed = ok & catalog["sha256"].fillna("").astype(bool)
        first = catalog.loc[hashed].groupby("sha256")["tile_id"].transform("min")
        key.loc[first.index] = first
    return key.map(lambda t: _rank(t, seed))


def _group_cut(keys: list[str], n: int) -> int:
    """Move a cut at position ``n`` of an ordered class so that no run of equal keys (copies) straddles it:
    forward past the run, or back before it when forward would take every tile."""
    if n <= 0 or n >= len(keys):
        return n
    forward = n
    while forward < len(keys) and keys[forward] == keys[forward - 1]:
        forward += 1
    if forward < len(keys):
        return forward
    while n > 0 and keys[n] == keys[n - 1]:
        n -= 1
    return n


def _take(count: int, fraction: float, keep_one_back: bool) -> int:
    """How many of ``count`` go to a held-out split: at least one, never all when one must stay."""
    if count <= 0 or fraction <= 0:
        return 0
    n = max(1, round(count * fraction))
    if keep_one_back:
        n = min(n, count - 1)
    return max(n, 0)


def assign_splits(catalog: pd.DataFrame, settings: SplitSettings, carve_validation: bool = True) -> pd.DataFrame:
    """Give every usable tile a split: stratified, deterministic in (seed, tile id), order-free; byte-identical
    copies of one class always land in the same split (:func:`_copy_ranks`).

    Tiles already marked ``test`` (train/test layout) keep it; validation is carved from train unless
    ``carve_validation`` is off (a spatial split has chosen whole blocks for it already); with
    ``sample_frac`` < 1 the training tiles left out are marked ``excluded`` (kept and counted).
    """
    out = catalog.copy()
    ok = out["status"] == TileStatus.OK
    out["_rank"] = _copy_ranks(out, ok, settings.seed)
    preset = ok & out["split"].isin(["train", "test", "validation"])
    if not preset.any():
        out.loc[ok, "split"] = "train"
        for _, group in out[ok].groupby("label"):
            if len(group) < 2:
                raise TrainingDataError(
                    f"class {group['label'].iloc[0]!r} has {len(group)} usable image; each class needs at least "
                    "two (one to train on, one to test): add images or remove the class folder"
                )
            group = group.sort_values(["_rank", "tile_id"])
            n_test = _group_cut(list(group["_rank"]), _take(len(group), settings.test_fraction, True))
            out.loc[group.index[:n_test], "split"] = "test"
    train = ok & (out["split"] == "train")
    for _, group in out[train].groupby("label"):
        group = group.sort_values(["_rank", "tile_id"])
        ordered = group.index
        n_val = _take(len(group), settings.validation_fraction, True) if len(group) >= 3 and carve_validation else 0
        n_val = len(ordered) - _group_cut(list(group["_rank"]), len(ordered) - n_val) if n_val else 0
        n_val = 0 if n_val == len(ordered) else n_val  # one run of copies: it stays in train
        out.loc[ordered[len(ordered) - n_val:] if n_val else [], "split"] = "validation"
        if settings.sample_frac < 1.0:
            rest = ordered[: len(ordered) - n_val]
            keep = max(1, round(len(rest) * settings.sample_frac))
            out.loc[rest[keep:], "split"] = EXCLUDED
    return out.drop(columns="_rank")


def check_class_names(catalog: pd.DataFrame) -> None:
    """Fail when two usable classes differ only by case (``Forest`` and ``forest``).

    They would be two classes to the classifier, but one column to Spark (whose column names ignore case):
    county scoring would then fail at the very end with COLUMN_ALREADY_EXISTS. Checked on the final labels
    (after the label map), so mapping both folders onto one class is a valid fix.
    """
    labels = pd.Series(sorted(set(catalog.loc[catalog["status"] == TileStatus.OK, "label"])), dtype=object)
    clashes = [sorted(group) for _, group in labels.groupby(labels.str.casefold()) if len(group) > 1]
    if clashes:
        names = "; ".join(" and ".join(f"{c}/" for c in group) for group in clashes)
        raise TrainingDataError(
            f"class folders {names} differ only by case, which Spark cannot keep apart (one probability column "
            "per class): merge them into one folder, rename one, or map them onto one class with AERIAL_LABEL_MAP"
        )


def check_splits(catalog: pd.DataFrame) -> None:
    """Every class must be trained on and tested: say which class is missing where."""
    ok = catalog[catalog["status"] == TileStatus.OK]
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
    ok = catalog[catalog["status"] == TileStatus.OK]
    table = pd.crosstab(ok["label"], ok["split"]) if len(ok) else pd.DataFrame()
    for split in (*SPLITS, EXCLUDED):
        if split not in table.columns and (split != EXCLUDED):
            table[split] = 0
    cols = [c for c in (*SPLITS, EXCLUDED) if c in table.columns]
    table = table[cols]
    bad = catalog[catalog["status"] != TileStatus.OK].groupby("label").size()
    table["quarantined"] = bad.reindex(table.index).fillna(0).astype(int)
    table.loc["**total**"] = table.sum()
    header = "| class | " + " | ".join(table.columns) + " |"
    sep = "|---|" + "---:|" * len(table.columns)
    lines = [header, sep]
    for label, row in table.iterrows():
        lines.append(f"| {label} | " + " | ".join(str(int(v)) for v in row.values) + " |")
    return "\n".join(lines)


INSPECT_COLUMNS = INSPECTION.names
INSPECT_SCHEMA = INSPECTION.ddl


def inspect_frames(expected_size: int):
    """The ``mapInPandas`` function that fully decodes each file (runs on executors).

    The sha256 of the bytes is taken here, from the bytes already read for the decode: content hashes
    cost no second read, and no file's bytes ever travel to the driver. A file that decodes badly keeps
    its hash too (it can still be a copy of another)."""
    from aerial_assets.errors import StorageError
    from aerial_assets.imagery.decode import ImageDecodeError, inspect
    from aerial_assets.storage.backends import storage_for
    from aerial_assets.storage.core import is_local

    def run(frames):
        for frame in frames:
            rows = []
            for tile_id, uri in zip(frame["tile_id"], frame["uri"], strict=True):
                digest = ""
                try:
                    data = storage_for(uri).read_bytes(uri)
                    digest = hashlib.sha256(data).hexdigest()
                    info = inspect(data, expected_size)
                    rows.append((tile_id, info.width, info.height, info.mode, TileStatus.OK.value, "", "; ".join(info.notes), digest))
                except (ImageDecodeError, OSError, StorageError) as exc:
                    if isinstance(exc, StorageError) and not is_local(uri):
                        raise  # remote: credentials or a network fault, which must fail loudly, not quarantine all
                    rows.append((tile_id, 0, 0, "", TileStatus.QUARANTINED.value, str(exc) or type(exc).__name__, "", digest))
            yield pd.DataFrame(rows, columns=INSPECT_COLUMNS)

    return run


def merge_inspection(listed: pd.DataFrame, inspected: pd.DataFrame) -> pd.DataFrame:
    """Put the executors' findings back into the listing (files quarantined at listing keep their reason)."""
    out = listed.set_index("tile_id")
    found = inspected.set_index("tile_id")
    cols = INSPECT_COLUMNS[1:]
    out.loc[found.index, cols] = found[cols]
    out["width"] = out["width"].astype(int)
    out["height"] = out["height"].astype(int)
    return out.reset_index()[CATALOG_COLUMNS]


def conversion_counts(catalog: pd.DataFrame) -> dict[str, int]:
    """How many usable tiles needed resizing, a mode change or a dtype scaling."""
    notes = catalog.loc[catalog["status"] == TileStatus.OK, "notes"].fillna("")
    return {
        "resized": int(notes.str.contains("resized").sum()),
        "mode_converted": int(notes.str.contains(r"to RGB|first 3 kept|scaled to uint8", regex=True).sum()),
    }


HELD_OUT = ("validation", "test")


@dataclass(frozen=True)
class Duplicates:
    """Byte-identical usable tiles (same sha256), in the three ways that matter.

    ``across_splits``: one row per validation/test tile whose bytes are also in an earlier split (train, or
    validation for a test tile), naming the copy: leakage, the held-out score then measures memory.
    ``within_split``: one row per group of identical tiles inside one split (inflated counts, skewed weights).
    ``across_classes``: one row per group of identical tiles under two or more classes (a label conflict).
    """

    across_splits: pd.DataFrame
    within_split: pd.DataFrame
    across_classes: pd.DataFrame

    def counts(self) -> dict[str, int]:
        held = self.across_splits
        return {
            "n_test_identical_to_train": int(((held["split"] == "test") & (held["copy_split"] == "train")).sum()),
            "n_validation_identical_to_train": int(
                ((held["split"] == "validation") & (held["copy_split"] == "train")).sum()),
            "n_test_identical_to_validation": int(
                ((held["split"] == "test") & (held["copy_split"] == "validation")).sum()),
            "n_duplicate_groups_within_split": len(self.within_split),
            "n_extra_copies_within_split": int((self.within_split["n"] - 1).sum()) if len(self.within_split) else 0,
            "n_groups_across_classes": len(self.across_classes),
        }


def find_duplicates(catalog: pd.DataFrame) -> Duplicates:
    """Group the usable tiles of ``catalog`` by content hash (see :class:`Duplicates`).

    Only tiles that are used count (status ok, in train/validation/test; sample_frac's ``excluded`` tiles are
    never fitted nor scored). Identical bytes under two classes are looked for among every ok tile, excluded
    ones included, since a label conflict is wrong wherever it sits. A catalog without hashes (written
    before they existed) has no duplicates to show: the checks say so and ask for a re-materialization.
    """
    hashed = catalog[(catalog["status"] == TileStatus.OK) & catalog.get("sha256", pd.Series("", index=catalog.index))
                     .fillna("").astype(bool)]
    used = hashed[hashed["split"].isin(SPLITS)].sort_values("tile_id")
    order = {split: i for i, split in enumerate(SPLITS)}
    first_by_split = {split: group.drop_duplicates("sha256").set_index("sha256")
                      for split, group in used.groupby("split")}
    leaks = []
    for row in used[used["split"].isin(HELD_OUT)].itertuples(index=False):
        for earlier in [s for s in SPLITS if order[s] < order[row.split]]:
            copies = first_by_split.get(earlier)
            if copies is not None and row.sha256 in copies.index:
                copy = copies.loc[row.sha256]
                leaks.append({"tile_id": row.tile_id, "split": row.split, "label": row.label,
                              "copy_of": copy["tile_id"], "copy_split": earlier, "copy_label": copy["label"],
                              "sha256": row.sha256})
                break
    across_splits = pd.DataFrame(leaks, columns=["tile_id", "split", "label", "copy_of", "copy_split",
                                                 "copy_label", "sha256"])
    within = [{"split": split, "sha256": sha, "n": len(group), "tiles": ", ".join(group["tile_id"])}
              for (split, sha), group in used.groupby(["split", "sha256"]) if len(group) > 1]
    within_split = pd.DataFrame(within, columns=["split", "sha256", "n", "tiles"])
    classes = [{"sha256": sha, "labels": ", ".join(sorted(set(group["label"]))), "tiles": ", ".join(group["tile_id"])}
               for sha, group in hashed.sort_values("tile_id").groupby("sha256") if group["label"].nunique() > 1]
    across_classes = pd.DataFrame(classes, columns=["sha256", "labels", "tiles"])
    return Duplicates(across_splits, within_split, across_classes)
