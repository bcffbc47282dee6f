"""Which storage serves a URI, and how GDAL opens a raster through it.

Apart from :mod:`aerial_assets.storage.core` because it chooses among the backends (core's local storage, Azure in
:mod:`aerial_assets.storage.azure`) and checks paths with :mod:`aerial_assets.storage.confine`, all of which build
on core: with the choice in core, core and its backends imported each other.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aerial_assets.errors import StorageError
from aerial_assets.storage.confine import require_regular_file
from aerial_assets.storage.core import AZURE_SCHEMES, LOCAL_SCHEMES, LocalStorage, Storage, scheme_of


def storage_for(uri: str) -> Storage:
    """The storage backend that serves ``uri``: local paths, or Azure (``az://``, ``abfs://``, ``abfss://``)."""
    scheme = scheme_of(uri)
    if scheme in LOCAL_SCHEMES:
        return LocalStorage()
    if scheme in AZURE_SCHEMES:
        from aerial_assets.storage.azure import AzureStorage

        return AzureStorage()
    raise StorageError(
        f"unsupported storage URI {uri!r}: use a local path, az://container/prefix or abfs://container/prefix"
    )


# GDAL's own HTTP reads (an https:// raster the user allowed) give up instead of hanging: seconds to connect, to
# answer. Config options GDAL reads from the environment when a file is opened, on the driver and on executors.
GDAL_NETWORK_TIMEOUTS = {"GDAL_HTTP_CONNECTTIMEOUT": "10", "GDAL_HTTP_TIMEOUT": "60", "GDAL_HTTP_MAX_RETRY": "2"}


def raster_opener(uri: str) -> Callable | None:
    """``rasterio.open(uri, opener=raster_opener(uri))`` reads Azure rasters through this storage layer; any
    other path (local, ``https://``, GDAL's ``/vsi...``) is left to GDAL (None).

    Every raster open goes through here, so this is also where a local path that is not a regular file (a
    FIFO would block GDAL forever) is refused, and where GDAL's network reads get their timeouts."""
    require_regular_file(uri)
    for key, value in GDAL_NETWORK_TIMEOUTS.items():
        os.environ.setdefault(key, value)
    return storage_for(uri).raster_opener(uri) if scheme_of(uri) in AZURE_SCHEMES else None
