"""Manifests of Spark-written datasets and stored models: what the writer wrote, checked by every reader.

A Parquet folder with a part file deleted still reads, just with fewer rows: a classifier then trains "on 8
tiles" without a word. A model folder with a truncated file fails deep inside Spark with a hundred lines of Java.
So every asset that writes such a folder records its files (relative path and size; a sha256 for models, which
are small) in ``manifest.json`` beside it, in the same atomic output; every reader compares the folder with it
first and refuses a mismatch in one line that names the asset partition to re-materialize. Hidden files
(Hadoop's ``.crc`` checksums) are left out on both sides: object storage never receives them. No Dagster import.
"""

from __future__ import annotations

import hashlib
import os
from typing import ClassVar

from pydantic import Field

from aerial_assets.errors import AerialError
from aerial_assets.records import Record, SideFile
from aerial_assets.storage.core import LOCAL_SCHEMES, LocalStorage, Storage, join, local_path, scheme_of


class IntegrityError(AerialError):
    """A stored dataset or model is not what its writer recorded (a file missing, truncated or changed)."""


class DatasetFiles(Record):
    """One dataset folder (or single file): its files' sizes, and their sha256 where recorded."""

    files: dict[str, int]
    sha256: dict[str, str] = Field(default_factory=dict)


class Manifest(SideFile):
    """``manifest.json`` of an asset's output folder: every dataset or model in it, by name."""

    FILE: ClassVar[str] = "manifest.json"
    datasets: dict[str, DatasetFiles]


def _listing(store: Storage, uri: str) -> dict[str, int]:
    """{relative path: size} of the non-hidden files of the dataset at ``uri`` (one entry ``""`` for a single
    file). The same listing serves the writer and the readers, so both sides skip the same hidden files."""
    if scheme_of(uri) in LOCAL_SCHEMES:
        path = local_path(uri)
        if os.path.isfile(path):
            return {"": os.path.getsize(path)}
        return {e.relative_path: int(e.size) for e in LocalStorage().list_files(uri)} if os.path.isdir(path) else {}
    try:
        entries = {e.relative_path: int(e.size) for e in store.list_files(uri)
                   if not e.relative_path.rsplit("/", 1)[-1].startswith(".")}
    except AerialError:  # not a folder
        entries = {}
    if not entries and store.exists(uri):
        return {"": len(store.read_bytes(uri))}
    return entries


def describe(store: Storage, uri: str, checksums: bool = False) -> DatasetFiles:
    """The files of the dataset at ``uri`` as written now, inside the writer's ``atomic_dir``: where Spark wrote
    them (``spark_path``: the folder itself, or Azure's local staging folder in ``staged`` mode)."""
    written = store.spark_path(uri)
    if scheme_of(written) in LOCAL_SCHEMES and os.path.exists(local_path(written)):
        store, uri = LocalStorage(), local_path(written)
    files = _listing(store, uri)
    sha = {rel: hashlib.sha256(store.read_bytes(join(uri, rel) if rel else uri)).hexdigest()
           for rel in files} if checksums else {}
    return DatasetFiles(files=files, sha256=sha)


def write_manifest(store: Storage, folder: str, names: list[str], checksums: bool = False) -> Manifest:
    """Describe the datasets ``names`` under ``folder`` (the output being written) and store ``manifest.json``."""
    manifest = Manifest(datasets={name: describe(store, join(folder, name), checksums) for name in names})
    manifest.write(store, folder)
    return manifest


def verify(store: Storage, folder: str, name: str, rematerialize: str) -> None:
    """Compare the dataset ``name`` under ``folder`` with what its writer recorded; an
    :class:`IntegrityError` naming ``rematerialize`` (``tile_features[mobilenet_v2]``) on any difference.
    An output written before manifests existed (no ``manifest.json``) is not checked."""
    if not Manifest.exists(store, folder):
        return
    recorded = Manifest.read(store, folder).datasets.get(name)
    if recorded is None:
        return
    uri = join(folder, name)
    stored = _listing(store, uri)
    missing = sorted(set(recorded.files) - set(stored))
    extra = sorted(set(stored) - set(recorded.files))
    resized = sorted(r for r in set(recorded.files) & set(stored) if recorded.files[r] != stored[r])
    changed: list[str] = []
    if not (missing or extra or resized) and recorded.sha256:
        for rel, digest in recorded.sha256.items():
            data = store.read_bytes(join(uri, rel) if rel else uri)
            if hashlib.sha256(data).hexdigest() != digest:
                changed.append(rel)
    problems = []
    for what, names in (("missing", missing), ("not written by it", extra), ("of another size (truncated?)", resized),
                        ("changed since written", changed)):
        if names:
            shown = ", ".join(n or name for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            problems.append(f"{len(names)} file(s) {what}: {shown}")
    if problems:
        raise IntegrityError(f"{uri} is not what {rematerialize} wrote ({'; '.join(problems)}): not read; "
                             f"re-materialize {rematerialize}")
