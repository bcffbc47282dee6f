"""One small storage layer addressed by URIs, so that assets never care where bytes live.

A URI is either a local path (``/data/x``, ``relative/x`` or ``file:///data/x``) or an Azure URI
(``az://container/prefix``, ``abfs://container/prefix``: :mod:`aerial_assets.storage.azure`). Every write is
atomic: bytes go to a temporary name next to the target and are moved into place only once complete, so a
failed run never leaves a half-written output that a later run would read. This module has no Dagster
import: it also runs inside Spark executors.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
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


def file_url(path: str) -> str:
    """A local path as the ``file://`` URL Spark gets. Spark resolves a bare path against the cluster's default file
    system (``fs.defaultFS``: HDFS on YARN and HDInsight), so a local data root given as ``/data/x`` would be looked
    for on HDFS there; the scheme makes every Spark read and write mean this machine's (or a shared mount's) files."""
    return "file://" + local_path(path)


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
        if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block the read forever
            raise StorageError(f"{uri!r} is not a regular file (a FIFO, socket, device or folder): not read")
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
        """Every file below ``root``; symlinks are followed, but one bad entry never stops the listing.

        An entry that cannot be a file is still listed, with ``size`` -1, so that the caller can quarantine
        it with its reason instead of failing on it: a dangling symlink, a symlink loop (a file link that
        resolves to itself, or a folder link back to one of its own ancestors, which is not descended),
        or something that is not a regular file (a FIFO or a device would block or never end a read).
        Whether a link may leave ``root`` is the caller's decision (the catalog's ``follow_external_links``).
        """
        import stat

        base = local_path(root)
        if not os.path.isdir(base):
            raise StorageError(f"no folder at {root!r}")
        # real paths of each listed folder and of its ancestors: a folder link to one of them is a loop
        chains: dict[str, frozenset[str]] = {base: frozenset({os.path.realpath(base)})}
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            chain = chains.pop(dirpath, frozenset({os.path.realpath(dirpath)}))
            kept, loops = [], []
            for name in sorted(d for d in dirnames if not d.startswith(".")):
                full = os.path.join(dirpath, name)
                real = os.path.realpath(full)
                if real in chain:
                    loops.append(name)
                else:
                    kept.append(name)
                    chains[full] = chain | {real}
            dirnames[:] = kept
            for name in sorted([n for n in filenames if not n.startswith(".")] + loops):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, base).replace(os.sep, "/")
                size = -1
                if name not in loops:
                    try:
                        info = os.stat(full)
                        size = info.st_size if stat.S_ISREG(info.st_mode) else -1
                    except OSError:  # dangling link, link loop, or removed since the folder was read
                        size = -1
                yield FileEntry(uri=full, relative_path=rel, size=size)

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
        """Write into ``<uri>.tmp-<pid>-<host>-<token>``, then swap it in (the old output briefly
        ``<uri>.old-...``). The names carry the owning process, so that after a ``kill -9`` a later run's
        :func:`sweep_stale_temporaries` can tell a dead run's leftovers from a live run's work in progress."""
        path = local_path(uri)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        token = uuid.uuid4().hex[:8]
        tmp = temporary_name(path, "tmp", token)
        os.makedirs(tmp)
        try:
            yield tmp
            old = temporary_name(path, "old", token)
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
        return file_url(uri)


def is_local(uri: str) -> bool:
    return scheme_of(uri) in LOCAL_SCHEMES


# --- temporaries owned by a process ------------------------------------------------------------------------
# A run killed with ``kill -9`` cannot clean up after itself. Its temporaries are named after it (pid and a
# host tag), so the next run can remove exactly those whose owner is gone and never a live run's.

_TEMPORARY = re.compile(r"^(?P<target>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}$")


def host_tag() -> str:
    """8 hex digits naming this host (a hash of its hostname). A pid means something only on its own host (and
    in its own container, which has its own hostname), so a sweeper judges only its own host's temporaries."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temporary_name(path: str, kind: str, token: str) -> str:
    """``<path>.<kind>-<pid>-<host tag>-<token>``: a temporary next to ``path``, owned by this process."""
    return f"{path}.{kind}-{os.getpid()}-{host_tag()}-{token}"


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs. A zombie (killed, not yet reaped by its parent) is dead:
    it holds no lock and writes nothing any more."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to another user
        pass
    fields = _proc_stat(pid)
    return not (fields and fields[0] == "Z")


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None: with its pid, this identifies a
    process even after the pid is reused by another one."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def sweep_stale_temporaries(root: str, max_depth: int = 4) -> list[str]:
    """Remove the temporaries :meth:`LocalStorage.atomic_dir` left under the local folder ``root`` when their
    process died (``kill -9``, out of memory, power loss); return their paths.

    Only names that carry this host's tag and a pid that no longer runs are touched: a live run's temporaries
    (another ``make run``, a run launched from the UI) are never removed, whoever calls this. A ``.old-``
    folder whose target is missing is a commit cut between its two renames: it is the previous committed
    output, and is put back instead of deleted. Temporaries of other hosts, and unowned ones (``.tmp-<token>``
    of older versions, single files being written), are left alone. Outputs sit at most ``max_depth`` folders
    below the root (layout.py), so the walk stops there instead of visiting every Parquet part file.
    """
    base = local_path(root)
    if not os.path.isdir(base):
        return []
    here, removed = host_tag(), []
    for dirpath, dirnames, filenames in os.walk(base):
        depth = os.path.relpath(dirpath, base).count(os.sep) + (dirpath != base)
        for name in sorted(dirnames + filenames):
            match = _TEMPORARY.match(name)
            if not match or match["host"] != here or process_alive(int(match["pid"])):
                continue
            full = os.path.join(dirpath, name)
            target = os.path.join(dirpath, match["target"])
            if match["kind"] == "old" and not os.path.lexists(target):
                os.replace(full, target)  # the previous output, back in place of the commit that never finished
            else:
                LocalStorage().remove(full)
                removed.append(full)
        dirnames[:] = [] if depth >= max_depth else sorted(
            d for d in dirnames if not d.startswith(".") and os.path.isdir(os.path.join(dirpath, d)))
    return removed
