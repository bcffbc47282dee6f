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
from aerial_assets.storage.core import LOCAL_SCHEMES, Storage, join, local_path, scheme_of


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


def _local(store: Storage, uri: str) -> str | None:
    """A local path where the folder being written actually is (local storage, or Azure's staging in ``staged``
    mode), else None (written straight to object storage)."""
    path = store.spark_path(uri) if hasattr(store, "spark_path") else uri
    return path if scheme_of(path) == "" and os.path.exists(path) else None


def _files(store: Storage, uri: str, local: str | None) -> dict[str, str | int]:
    """{relative path: size} of every non-hidden file (one entry "" for a single file)."""
    if local is not None and os.path.isfile(local):
        return {"": os.path.getsize(local)}
    if local is not None:
        out: dict[str, str | int] = {}
        for dirpath, dirnames, filenames in os.walk(local):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(n for n in filenames if not n.startswith(".")):
                full = os.path.join(dirpath, name)
                out[os.path.relpath(full, local).replace(os.sep, "/")] = os.path.getsize(full)
        return out
    return dict(_stored_files(store, uri))


def describe(store: Storage, uri: str, checksums: bool = False) -> DatasetFiles:
    """The files of the dataset at ``uri`` as written now (inside the writer's ``atomic_dir``)."""
    local = _local(store, uri)
    files = _files(store, uri, local)
    sha: dict[str, str] = {}
    if checksums:
        for rel in files:
            if local is not None:
                with open(os.path.join(local, rel) if rel else local, "rb") as handle:
                    data = handle.read()
            else:
                data = store.read_bytes(join(uri, rel) if rel else uri)
            sha[rel] = hashlib.sha256(data).hexdigest()
    return DatasetFiles(files={k: int(v) for k, v in files.items()}, sha256=sha)


def write_manifest(store: Storage, folder: str, names: list[str], checksums: bool = False) -> Manifest:
    """Describe the datasets ``names`` under ``folder`` (the output being written) and store ``manifest.json``."""
    manifest = Manifest(datasets={name: describe(store, join(folder, name), checksums) for name in names})
    manifest.write(store, folder)
    return manifest


def _stored_files(store: Storage, uri: str) -> dict[str, int]:
    entries = {e.relative_path: int(e.size) for e in store.list_files(uri)
               if not e.relative_path.rsplit("/", 1)[-1].startswith(".")} if _is_folder(store, uri) else {}
    if not entries and store.exists(uri) and not _is_folder(store, uri):
        return {"": len(store.read_bytes(uri))}
    return entries


def _is_folder(store: Storage, uri: str) -> bool:
    if scheme_of(uri) in LOCAL_SCHEMES:
        return os.path.isdir(local_path(uri))
    try:
        return any(True for _ in store.list_files(uri))
    except AerialError:
        return False


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
    stored = _stored_files(store, uri)
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
