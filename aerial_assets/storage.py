"""One small storage layer addressed by URIs, so that assets never care where bytes live.

A URI is either a local path (``/data/x``, ``relative/x`` or ``file:///data/x``) or an Azure URI
(``az://container/prefix``, ``abfs://container/prefix``: :mod:`aerial_assets.azure_storage`). Every write is
atomic: bytes go to a temporary name next to the target and are moved into place only once complete, so a
failed run never leaves a half-written output that a later run would read. This module has no Dagster
import: it also runs inside Spark executors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aerial_assets.errors import StorageError

LOCAL_SCHEMES = ("", "file")
AZURE_SCHEMES = ("az", "abfs", "abfss")


def scheme_of(uri: str) -> str:
    """Return the URI scheme (``""`` for a plain path)."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep else ""


def join(base: str, *parts: str) -> str:
    """Join URI segments with ``/`` whatever the backend."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def local_path(uri: str) -> str:
    """The absolute filesystem path of a local URI."""
    if scheme_of(uri) not in LOCAL_SCHEMES:
        raise StorageError(f"{uri!r} is not a local path")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class FileEntry:
    """A file found by :meth:`Storage.list_files`: its URI, path relative to the listed root, size."""

    uri: str
    relative_path: str
    size: int


class Storage(ABC):
    """File operations every backend offers. Implementations: :class:`LocalStorage` (and cloud ones)."""

    @abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: readers see the old content or the new one, never a part."""

    @abstractmethod
    def list_files(self, root: str) -> Iterator[FileEntry]:
        """Every file below ``root``, recursively, in sorted order (hidden files excluded)."""

    @abstractmethod
    def list_dirs(self, root: str) -> list[str]:
        """Names of the immediate sub-folders of ``root`` (hidden ones excluded), sorted."""

    @abstractmethod
    def remove(self, uri: str) -> None:
        """Remove a file or a folder tree; a missing target is not an error."""

    @abstractmethod
    @contextlib.contextmanager
    def atomic_dir(self, uri: str) -> Iterator[str]:
        """Yield a temporary folder URI; on success it replaces ``uri`` whole, on error it is removed."""

    @abstractmethod
    def copy_tree(self, src: str, dst: str) -> None:
        """Copy a file or folder ``src`` to ``dst`` (``dst`` must not exist; use inside atomic_dir)."""

    @abstractmethod
    def spark_path(self, uri: str) -> str:
        """The path string Spark should use to read or write ``uri``."""

    def raster_opener(self, uri: str) -> Callable | None:
        """The ``opener`` for ``rasterio.open(uri, opener=...)``: None where GDAL reads the path itself."""
        return None

    def upload_dir(self, local_dir: str, uri: str) -> None:
        """Copy the files of a local folder to ``uri`` (use inside atomic_dir)."""
        for dirpath, _, filenames in os.walk(local_dir):
            for name in filenames:
                full = os.path.join(dirpath, name)
                with open(full, "rb") as handle:
                    self.write_bytes(join(uri, os.path.relpath(full, local_dir).replace(os.sep, "/")), handle.read())

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))


class LocalStorage(Storage):
    """The local filesystem. Renames within one folder are atomic on POSIX filesystems."""

    def exists(self, uri: str) -> bool:
        return os.path.exists(local_path(uri))

    def read_bytes(self, uri: str) -> bytes:
        path = local_path(uri)
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError as exc:
            raise StorageError(f"no file at {uri!r}: check the path, or materialize the upstream asset") from exc

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = local_path(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def list_files(self, root: str) -> Iterator[FileEntry]:
        base = local_path(root)
        if not os.path.isdir(base):
            raise StorageError(f"no folder at {root!r}")
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, base).replace(os.sep, "/")
                yield FileEntry(uri=full, relative_path=rel, size=os.path.getsize(full))

    def list_dirs(self, root: str) -> list[str]:
        base = local_path(root)
        if not os.path.isdir(base):
            raise StorageError(f"no folder at {root!r}")
        return sorted(n for n in os.listdir(base) if not n.startswith(".") and os.path.isdir(os.path.join(base, n)))

    def remove(self, uri: str) -> None:
        path = local_path(uri)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)

    @contextlib.contextmanager
    def atomic_dir(self, uri: str) -> Iterator[str]:
        path = local_path(uri)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        token = uuid.uuid4().hex[:8]
        tmp = f"{path}.tmp-{token}"
        os.makedirs(tmp)
        try:
            yield tmp
            old = f"{path}.old-{token}"
            if os.path.lexists(path):
                os.replace(path, old)
            os.replace(tmp, path)
            self.remove(old)
        finally:
            self.remove(tmp)

    def copy_tree(self, src: str, dst: str) -> None:
        source, target = local_path(src), local_path(dst)
        if not os.path.exists(source):
            raise StorageError(f"nothing to copy at {src!r}: materialize the upstream asset first")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(source):
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)

    def spark_path(self, uri: str) -> str:
        return local_path(uri)


def storage_for(uri: str) -> Storage:
    """The storage backend that serves ``uri``: local paths, or Azure (``az://``, ``abfs://``, ``abfss://``)."""
    scheme = scheme_of(uri)
    if scheme in LOCAL_SCHEMES:
        return LocalStorage()
    if scheme in AZURE_SCHEMES:
        from aerial_assets.azure_storage import AzureStorage

        return AzureStorage()
    raise StorageError(
        f"unsupported storage URI {uri!r}: use a local path, az://container/prefix or abfs://container/prefix"
    )


def is_local(uri: str) -> bool:
    return scheme_of(uri) in LOCAL_SCHEMES


def raster_opener(uri: str) -> Callable | None:
    """``rasterio.open(uri, opener=raster_opener(uri))`` reads Azure rasters through this storage layer; any
    other path (local, ``https://``, GDAL's ``/vsi...``) is left to GDAL (None)."""
    return storage_for(uri).raster_opener(uri) if scheme_of(uri) in AZURE_SCHEMES else None
