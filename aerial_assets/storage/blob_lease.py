"""An exclusive, self-renewing lease on one blob: the lock that serialises the commits of one output on blob storage.

Why a blob lease: Blob Storage has no rename and no lock, and two processes that replace one output folder by
copy-then-delete at the same time would leave a mix of both. A lease is the service's own mutual exclusion (one
holder at a time, refused to every other client), and it expires by itself when its holder stops renewing it, so
a commit whose process was killed never blocks the next one for longer than :data:`LEASE_S`.
azure-storage-blob's ``BlobLeaseClient`` gives acquire, renew and release; the waiting for another holder and the
thread that renews the lease while a commit copies are what neither the SDK nor adlfs offers, hence this module.

No Dagster import. The calls go through adlfs's own async client on fsspec's IO loop (``fsspec.asyn.sync``), so
they use the same credentials, retries and timeouts as every other storage call.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from aerial_assets.errors import StorageError

LEASE_S = 30  # the service allows 15-60 s (or infinite, which a killed process would hold for ever)
RENEW_EVERY_S = LEASE_S / 4  # three renewals can fail (each within the client's bounded retries) before it lapses
WAIT_S = 3600.0  # how long a commit waits for another process's commit of the same output
_POLL_S = (0.2, 2.0)  # first and longest pause between two attempts to take a held lease


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


class BlobLease:
    """The lease on the blob ``container/key`` (created empty when absent), taken by :meth:`acquire`, renewed by a
    daemon thread until :meth:`delete` or :meth:`release`. ``what`` names the output in errors."""

    def __init__(self, fs, container: str, key: str, what: str, wait_s: float = WAIT_S):
        self._fs, self._container, self._key, self._what, self._wait_s = fs, container, key, what, wait_s
        self._lease = None
        self._blob = None
        self._last_renewed = 0.0
        self._lost: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _call(self, method, *args, **kwargs):
        from fsspec.asyn import sync

        return sync(self._fs.loop, method, *args, **kwargs)

    def acquire(self) -> None:
        """Take the lease, waiting (up to ``wait_s``) while another process holds it; then start renewing it."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.storage.blob.aio import BlobLeaseClient

        deadline = time.monotonic() + self._wait_s
        pause = _POLL_S[0]
        while True:
            blob = self._fs.service_client.get_blob_client(self._container, self._key)
            try:  # create it if absent; an existing one (leased or not) answers 409/412, which is what we expect
                self._call(blob.upload_blob, b"", overwrite=False)
            except HttpResponseError as exc:
                if getattr(exc, "status_code", None) not in (409, 412):
                    raise
            lease = BlobLeaseClient(blob)
            try:
                self._call(lease.acquire, lease_duration=LEASE_S)
                break
            except ResourceNotFoundError:
                continue  # its holder finished and deleted it between our create and acquire: create it again
            except HttpResponseError as exc:
                if _error_code(exc) not in ("LeaseAlreadyPresent", "LeaseIsBreakingAndCannotBeAcquired"):
                    raise
            if time.monotonic() > deadline:
                raise StorageError(f"{self._what}: another process has been committing it for over "
                                   f"{self._wait_s:.0f} s ({self.holder()}); wait for it or stop it, then retry")
            time.sleep(pause)
            pause = min(pause * 2, _POLL_S[1])
        self._blob, self._lease = blob, lease
        self._last_renewed = time.monotonic()
        record = {"uri": self._what, "host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._call(blob.upload_blob, json.dumps(record).encode(), overwrite=True, lease=lease)
        self._thread = threading.Thread(target=self._renew, name=f"lease {self._key}", daemon=True)
        self._thread.start()

    def holder(self) -> str:
        """Who holds the lease, from the record its holder wrote (best effort: for error messages)."""
        try:
            blob = self._fs.service_client.get_blob_client(self._container, self._key)
            data = self._call(self._read, blob)
            info = json.loads(data or b"{}")
            return f"pid {info['pid']} on {info['host']}, since {info['started']}"
        except Exception:  # noqa: BLE001 - only a description; the holder may not have written it yet
            return "holder unknown"

    @staticmethod
    async def _read(blob) -> bytes:
        stream = await blob.download_blob()
        return await stream.readall()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY_S):
            try:
                self._call(self._lease.renew)
                self._last_renewed = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - kept and raised by check(); retried until the lease lapses
                if time.monotonic() - self._last_renewed >= LEASE_S:
                    self._lost = exc
                    return

    def check(self) -> None:
        """Raise when the lease may have lapsed (renewals failed for a whole lease period): another process may
        have taken it, so the commit must stop writing."""
        if self._lost is not None or time.monotonic() - self._last_renewed >= LEASE_S:
            raise StorageError(f"{self._what}: lost the commit lease (the storage service did not answer for "
                               f"{LEASE_S} s); the output is left marked incomplete: re-materialize it")

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def delete(self) -> None:
        """Delete the blob (which ends the lease): the commit is complete."""
        self._halt()
        self.check()
        self._call(self._blob.delete_blob, lease=self._lease)

    def release(self) -> None:
        """Let the lease go and keep the blob (a commit that failed: readers keep refusing the output, and the next
        commit may start at once)."""
        self._halt()
        try:
            self._call(self._lease.release)
        except Exception:  # noqa: BLE001 - an expired lease needs no release; the blob is what matters
            pass
