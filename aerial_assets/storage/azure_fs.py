"""adlfs, the fsspec file system of Azure Blob Storage, with bounded retries and timeouts: one client per set of
credentials in a process. No Dagster import (executors use it too).
"""

from __future__ import annotations

import functools

from aerial_assets.errors import StorageError
from aerial_assets.storage.azure_credentials import AzureCredentials, redact

# Bounded waits on the Blob service. The SDK's defaults (per request up to 3 retries 15 s and more apart, a
# 20 s connect timeout), repeated by every call of a run, made an endpoint that refuses connections take about
# 9 minutes to fail. Now a request that cannot connect (refused, unknown host, no answer within
# CONNECT_TIMEOUT_S) is retried once, ~3 s later, so a wrong or unreachable endpoint is reported within
# seconds; errors of a reachable service (throttling, 5xx, a broken read) still get RETRY_TOTAL retries
# (backoff ~3, 5, 9 s) to ride out transient trouble.
RETRY_TOTAL = 3
RETRY_CONNECT = 1
RETRY_INITIAL_BACKOFF_S = 1
RETRY_INCREMENT_BASE = 2
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60  # between two reads of one response, not for a whole transfer


@functools.lru_cache(maxsize=16)
def filesystem(credentials: AzureCredentials):
    """One adlfs client per set of credentials in a process, created on first use.

    A cache of immutable clients, not a setting: executors build a storage object per call
    (``storage_for``), and a client per call would redo the credential handshake for every tile."""
    try:
        return _bounded_filesystem_class()(skip_instance_cache=True, **credentials.adlfs_kwargs())
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - adlfs raises ValueError with the cause's text
        raise StorageError(f"cannot set up Azure storage access with the {credentials.kind} "
                           f"({credentials.source}): {redact(str(exc), credentials).splitlines()[0]}") from None


_BOUNDED_FS: list[type] = []


def client_options() -> dict[str, object]:
    """Keyword arguments for every ``BlobServiceClient``: bounded retries and timeouts (see RETRY_TOTAL)."""
    from azure.storage.blob.aio import ExponentialRetry  # the async one: adlfs uses the aio client

    return {"retry_policy": ExponentialRetry(initial_backoff=RETRY_INITIAL_BACKOFF_S,
                                             increment_base=RETRY_INCREMENT_BASE, retry_total=RETRY_TOTAL,
                                             retry_connect=RETRY_CONNECT, retry_read=RETRY_TOTAL, random_jitter_range=1),
            "connection_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S}


def _bounded_filesystem_class() -> type:
    """``adlfs.AzureBlobFileSystem`` whose Blob client has :func:`client_options`.

    adlfs builds its ``BlobServiceClient`` itself with the SDK's defaults and takes no client options (its
    ``connection_timeout``/``read_timeout`` reach uploads and downloads only, and nothing sets the retries),
    so ``do_connect`` lets adlfs pick the URL and the credential as usual, then makes the same client with
    these options. Built on first use: importing this module must not need adlfs.
    """
    if _BOUNDED_FS:
        return _BOUNDED_FS[0]
    import adlfs
    from azure.storage.blob.aio import BlobServiceClient

    class BoundedAzureBlobFileSystem(adlfs.AzureBlobFileSystem):
        def do_connect(self) -> None:
            super().do_connect()
            options = client_options()
            if self.connection_string is not None:
                client = BlobServiceClient.from_connection_string(self.connection_string, **options)
            else:  # the same choice as adlfs: a credential or key, else a SAS in the URL, else anonymous
                credential = next((c for c in (self.credential, self.account_key) if c is not None), None)
                url = self.account_url + (self.sas_token if credential is None and self.sas_token else "")
                client = BlobServiceClient(url, credential=credential, _location_mode=self.location_mode, **options)
            self.service_client = client  # adlfs's own client has not opened a connection yet: nothing to close

    BoundedAzureBlobFileSystem.__module__ = __name__
    _BOUNDED_FS.append(BoundedAzureBlobFileSystem)
    return BoundedAzureBlobFileSystem


def __getattr__(name: str) -> object:
    # So that a pickled filesystem (fsspec pickles the class by name) finds its class in a fresh process.
    if name == "BoundedAzureBlobFileSystem":
        return _bounded_filesystem_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
