"""Where a user's file may send the product: every path named *inside* a user file (a STAC href, a tile name in a
summary CSV, a tile folder's symlink) is resolved and confined here. No Dagster import.

A file a user hands over names other files; those names must stay where the file is (its folder, or its
container on object storage) or under a root the user allowed explicitly. Otherwise a STAC item can make the
product read ``../outside/secret.tif`` into a county map, or send requests to any host named in an href. Local
paths are compared after resolving symlinks (``realpath``), object-store URIs after normalising ``..``.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence

from aerial_assets.errors import StorageError
from aerial_assets.storage.core import LOCAL_SCHEMES, local_path, scheme_of

# Schemes the storage layer reads itself; anything else (http, https, s3, gs, ftp, GDAL's /vsicurl/) is remote and
# read only under a root the user allowed.
STORAGE_SCHEMES = ("", "file", "az", "abfs", "abfss")


def _key(uri: str) -> tuple[str, str]:
    """(scheme, normalised path) to compare containment: local paths resolved through symlinks."""
    scheme = scheme_of(uri)
    if scheme in LOCAL_SCHEMES and not uri.startswith("/vsi"):
        return "", os.path.realpath(local_path(uri))
    rest = uri.partition("://")[2] if "://" in uri else uri
    netloc, _, path = rest.partition("/")
    return f"{scheme}://{netloc.lower()}", posixpath.normpath("/" + path)


def is_within(uri: str, root: str) -> bool:
    """Whether ``uri`` lies under ``root`` (same scheme and account/host; path at or below root's)."""
    (scheme, path), (root_scheme, root_path) = _key(uri), _key(root)
    if scheme != root_scheme:
        return False
    sep = os.sep if not scheme else "/"
    return path == root_path or path.startswith(root_path.rstrip(sep) + sep)


def container_of(uri: str) -> str:
    """The folder a file's relative names may reach: a local file's folder; on object storage, the
    container (``az://container``), since a catalog may sit beside the folder of its imagery."""
    scheme = scheme_of(uri)
    if scheme in LOCAL_SCHEMES:
        return os.path.dirname(local_path(uri))
    netloc = uri.partition("://")[2].partition("/")[0]
    return f"{scheme}://{netloc}"


def confine(uri: str, roots: Sequence[str], what: str, setting: str) -> str:
    """``uri`` if it lies under one of ``roots``; else a :class:`StorageError` naming ``what`` (where the name came
    from) and ``setting`` (how to allow another root). A remote scheme is never inside a local or storage root,
    so it passes only under a root the user listed."""
    if any(is_within(uri, root) for root in roots if root):
        return uri
    remote = scheme_of(uri) not in STORAGE_SCHEMES or uri.startswith("/vsi")
    where = "a remote location" if remote else f"outside {', '.join(r for r in roots if r)}"
    raise StorageError(f"{what} names {uri}, {where}: not read (names in a file must stay beside it; to allow "
                       f"another location, list its prefix in {setting})")


def require_regular_file(uri: str) -> None:
    """A local path must be a regular file (after symlinks): a FIFO blocks a reader forever, a device never ends.
    Other URIs are left to their reader (which has timeouts)."""
    if scheme_of(uri) not in LOCAL_SCHEMES or uri.startswith("/vsi"):
        return
    try:
        mode = os.stat(local_path(uri)).st_mode
    except OSError:
        return  # missing or unreadable: the reader's own error names it
    if not stat.S_ISREG(mode):
        raise StorageError(f"{uri} is not a regular file (a FIFO, socket, device or folder): not opened")
