"""Azure Blob Storage and ADLS Gen2 behind :class:`aerial_assets.storage.core.Storage`, through fsspec/adlfs.

URIs: ``az://container/prefix`` (Blob Storage) and ``abfs://container/prefix`` or
``abfss://container@account.dfs.core.windows.net/prefix`` (ADLS Gen2). All of them go through adlfs, which
talks to the account's Blob endpoint (an ADLS Gen2 account serves it too), so no dfs-only call is made.

No Dagster import: this module also runs inside Spark executors, which read tile bytes, rasters and ONNX
models from Azure through it (no hadoop-azure connector needed for that).

Credentials and settings
    Every setting travels on the :class:`AzureStorage` instance (credentials, Spark path mode, direct-mode URL
    scheme); there is no process-wide setting. On the driver, :class:`aerial_assets.defs.resources.StorageResource`
    builds one instance from the credentials it got from Dagster ``EnvVar`` s, and every asset writes and hands
    Spark paths through it. Executors, and code that reads an input by URI (``storage_for``), build the
    credentials from their own environment, with the same variable names (:meth:`AzureCredentials.from_env`): a connection string,
    an account key, a SAS token, or ``DefaultAzureCredential`` (managed identity, workload identity, az login)
    when only the account name is set. Credentials never travel in a Spark plan: pickling an
    :class:`AzureStorage` or :class:`AzureCredentials` keeps no secret (the other side reads its environment).
    Errors name the URI and the kind of credential, never its value. The credentials, and the secrets kept out of
    every message, are :mod:`aerial_assets.storage.azure_credentials`'s; the adlfs client with bounded retries is
    :mod:`aerial_assets.storage.azure_fs`'s.

Atomic folders (``atomic_dir``)
    Blob storage has no rename, so a folder is written under a temporary prefix ``<uri>.tmp-<token>/`` and
    committed by copy-then-delete, holding the output's journal entry
    ``<container>/.aerial-commits/<escaped prefix>``: (1) the committer creates the entry if absent and takes an
    exclusive blob lease on it (waiting while another process holds it; :mod:`aerial_assets.storage.blob_lease`),
    renewed every few seconds while it works, (2) the old blobs under ``<uri>/`` are deleted, (3) every new file
    is copied there, (4) the entry is deleted (which ends the lease), (5) the temporary prefix is deleted.
    Guarantees, for any number of processes and hosts on one storage account:
    - Two commits of one output never overlap: the second waits for the first's lease, then replaces the
      output whole. Afterwards the output holds exactly the files of one commit (the last), never a mix.
    - While an entry exists every read under that output fails (``exists`` answers False, the rest raise
      "incomplete: ... re-materialize"), so a commit in progress, or one that died in (2)-(3), is never read as
      complete. The journal is listed afresh for every check (no cache).
    - A commit that fails keeps its entry (readers keep refusing) and lets its lease go; one whose process died
      leaves a lease that lapses within ``LEASE_S`` (30 s). The next commit of that output takes the entry
      over and clears it; a failure before (1) leaves the previous output untouched.
    - A committer that cannot renew its lease for a whole lease period stops before its next write.
    Not guaranteed: a reader that passed its journal check just before a commit began and goes on reading
    file after file can find a file gone (an error) or, reading several files one by one, an old one and a new
    one. Within a run Dagster orders readers after writers, and the run lock (one run per data root on one
    Dagster home) keeps two runs from doing that; two hosts running against one data root are not protected
    from it. Every single blob write is atomic (a blob is committed whole).

Spark and Azure paths (``spark_path``)
    ``staged`` (default): Spark reads and writes local folders, so it needs no hadoop-azure connector. Inside
    ``atomic_dir`` a Spark output goes to a local staging folder that the commit uploads; a committed output
    that Spark must read is downloaded once per process into a local cache (keyed by the blobs' etags).
    This needs Spark to share the driver's filesystem: local Spark or a Spark Connect server on the same host.
    ``direct``: Spark gets Hadoop URLs (:func:`spark_url`) and reads and writes Azure itself through the ABFS
    driver of hadoop-azure; the Hadoop configuration it needs for these credentials, and setting it on a classic
    session at run time, are :mod:`aerial_assets.spark.hadoop_azure`'s (Databricks and
    HDInsight clusters, and Spark Connect servers, carry their own). Executors still write GeoParquet parts and
    read tiles, rasters and models through this module, with the credentials of their own environment.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, unquote

from aerial_assets.errors import ConfigurationError, StorageError
from aerial_assets.settings import SPARK_AZURE_SCHEMES, SPARK_MODES
from aerial_assets.storage.azure_credentials import (
    ENV_ACCOUNT_NAME,
    ENV_BLOB_ENDPOINT,
    AzureCredentials,
    connection_string_field,
    redact,
)
from aerial_assets.storage.azure_fs import filesystem
from aerial_assets.storage.core import AZURE_SCHEMES, FileEntry, Storage, file_url, join

JOURNAL = ".aerial-commits"
STREAM_COPY_BYTES = 64 * 1024 * 1024
_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


@dataclass(frozen=True)
class BlobPath:
    """A parsed Azure URI."""

    uri: str
    scheme: str
    container: str
    key: str
    account: str  # from abfss://container@account.dfs.core.windows.net/..., else ""

    @property
    def fs_path(self) -> str:
        return f"{self.container}/{self.key}".rstrip("/")


def parse(uri: str) -> BlobPath:
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in AZURE_SCHEMES:
        raise StorageError(f"{uri!r} is not an Azure URI (az://container/path or abfs://container/path)")
    netloc, _, key = rest.partition("/")
    container, at, host = netloc.partition("@")
    if not _CONTAINER.match(container):
        raise StorageError(f"{uri!r}: {container!r} is not a valid container name (3-63 lower-case letters, digits "
                           "and single hyphens): use az://container/path")
    return BlobPath(uri, scheme.lower(), container, key.strip("/"), host.split(".")[0] if at else "")


class AzureStorage(Storage):
    """Blob Storage / ADLS Gen2 through adlfs, with its settings on the instance: ``credentials`` (None: this
    process's environment, as Spark executors do), ``spark_mode`` (``staged`` or ``direct``) and
    ``spark_scheme`` (``abfss`` or ``wasbs``). The folders being written (``atomic_dir``) and the local scratch
    folder are this instance's own, so ``spark_path`` of a folder being written must be asked of the instance
    that writes it."""

    def __init__(self, credentials: AzureCredentials | None = None, spark_mode: str = "staged",
                 spark_scheme: str = "abfss"):
        if spark_mode not in SPARK_MODES:
            raise StorageError(f"unknown Spark storage mode {spark_mode!r}: valid modes: {', '.join(SPARK_MODES)}")
        self._credentials = credentials
        self.spark_mode = spark_mode
        self.spark_scheme = checked_scheme(spark_scheme)
        self._writing: dict[str, str] = {}  # temporary prefix URI of an atomic_dir -> its local staging folder
        self._containers_seen: set[tuple[str, str]] = set()
        self._scratch_dir = ""
        self._lock = threading.Lock()

    def __reduce__(self):
        # Never pickle a secret (for example into a Spark closure): the other side uses its own environment.
        return (AzureStorage, ())

    @property
    def credentials(self) -> AzureCredentials:
        if self._credentials is None:
            self._credentials = AzureCredentials.from_env()
        return self._credentials

    def _scratch(self) -> str:
        """This instance's local folder for staged Spark outputs and downloaded Spark inputs (removed at exit)."""
        with self._lock:
            if not self._scratch_dir:
                self._scratch_dir = tempfile.mkdtemp(prefix="aerial-spark-io-")
                atexit.register(shutil.rmtree, self._scratch_dir, True)
            return self._scratch_dir

    # --- plumbing ------------------------------------------------------------------------------------------

    def _fs(self):
        return filesystem(self.credentials)

    def _parse(self, uri: str) -> BlobPath:
        path = parse(uri)
        creds = self.credentials
        if path.account and creds.account and path.account != creds.account:
            raise StorageError(f"{uri} is in storage account {path.account!r} but the credentials are for "
                               f"{creds.account!r} ({creds.source})")
        return path

    def _describe(self, exc: BaseException, uri: str, action: str) -> str:
        creds = self.credentials
        status = getattr(exc, "status_code", None)
        code = getattr(exc, "error_code", "") or ""
        code = str(getattr(code, "value", code))
        account = creds.account or "?"
        name = type(exc).__name__
        if status in (401, 403) or name == "ClientAuthenticationError" or "AUTHORIZATION" in code.upper() \
                or "AUTHENTICATION" in code.upper():
            return (f"cannot {action} {uri}: storage account {account!r} refused the {creds.kind} "
                    f"({code or status or name}); check {creds.source}")
        if code == "ContainerNotFound" or "ContainerNotFound" in str(exc):
            return self._no_container(uri)
        if name in ("ServiceRequestError", "ServiceResponseError", "ClientConnectorError", "ConnectionError") \
                or isinstance(exc, ConnectionError | TimeoutError):
            cause = " ".join(redact(str(exc), creds).split())[:160]
            return (f"cannot {action} {uri}: the Blob endpoint {redact(creds.endpoint, creds) or '?'} of storage "
                    f"account {account!r} is unreachable ({name}{': ' + cause if cause else ''}); check the network "
                    f"and the endpoint ({ENV_BLOB_ENDPOINT} or the connection string)")
        detail = redact(str(exc), creds).strip().splitlines()
        return f"cannot {action} {uri}: {name}" + (f": {detail[0]}" if detail else "")

    def _no_container(self, uri: str) -> str:
        path = parse(uri)
        return (f"cannot use {uri}: container {path.container!r} does not exist in storage account "
                f"{self.credentials.account or '?'!r}; create it (az storage container create -n {path.container}) "
                "or fix the URI")

    @contextlib.contextmanager
    def _errors(self, uri: str, action: str):
        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError:
            self._check_container(uri)
            raise StorageError(f"no file at {uri!r}: check the path, or materialize the upstream asset") from None
        except Exception as exc:  # noqa: BLE001 - Azure SDK, aiohttp and adlfs errors become one clear error
            raise StorageError(self._describe(exc, uri, action)) from None

    def _check_container(self, uri: str) -> None:
        path = parse(uri)
        seen = (self.credentials.account, path.container)
        if seen in self._containers_seen:
            return
        try:
            exists = self._fs().exists(path.container)
        except Exception as exc:  # noqa: BLE001
            raise StorageError(self._describe(exc, uri, "reach")) from None
        if not exists:
            raise StorageError(self._no_container(uri))
        self._containers_seen.add(seen)

    # --- commit journal ------------------------------------------------------------------------------------

    @staticmethod
    def _journal_key(path: BlobPath) -> str:
        """The journal entry of the output ``path`` (a blob name inside its container)."""
        return f"{JOURNAL}/{quote(path.key, safe='')}"

    def _journal(self, path: BlobPath) -> frozenset[str]:
        """The output keys of ``path``'s container being replaced now, listed afresh (never cached)."""
        with self._errors(path.uri, "read"):
            entries = self._fs().find(f"{path.container}/{JOURNAL}")
        return frozenset(unquote(e.rsplit("/", 1)[-1]) for e in entries)

    def _check_readable(self, path: BlobPath) -> None:
        for key in self._journal(path):
            if path.key == key or path.key.startswith(f"{key}/"):
                raise StorageError(
                    f"{path.uri} is incomplete: a run started replacing {path.scheme}://{path.container}/{key} and "
                    "has not finished (still running, or it stopped mid-commit); re-materialize that asset")

    # --- Storage --------------------------------------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        path = self._parse(uri)
        for key in self._journal(path):
            if path.key == key or path.key.startswith(f"{key}/"):
                return False
        with self._errors(uri, "check"):
            found = self._fs().exists(path.fs_path)
        if not found:
            self._check_container(uri)
        return found

    def read_bytes(self, uri: str) -> bytes:
        path = self._parse(uri)
        self._check_readable(path)
        with self._errors(uri, "read"):
            return self._fs().cat_file(path.fs_path)

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = self._parse(uri)
        with self._errors(uri, "write"):
            self._fs().pipe_file(path.fs_path, data)

    def _files(self, path: BlobPath, folders: list[str] | None = None) -> dict[str, dict]:
        """Every blob under ``path`` (or ``path`` itself), by key relative to it, with size and etag; the
        folders below ``path`` (their filesystem paths) are appended to ``folders`` when it is given."""
        fs = self._fs()
        with self._errors(path.uri, "list"):
            found = fs.find(path.fs_path, detail=True, withdirs=folders is not None)
            if isinstance(found, list):  # adlfs answers a single file's path with a list of names
                found = {name: fs.info(name) for name in found}
        prefix = path.fs_path + "/"
        out = {}
        for name, info in found.items():
            if info.get("type") == "directory":
                if folders is not None and name.startswith(prefix):
                    folders.append(name)
                continue
            if name == path.fs_path:
                out[""] = info
            elif name.startswith(prefix):
                out[name[len(prefix):]] = info
        return out

    def list_files(self, root: str) -> Iterator[FileEntry]:
        path = self._parse(root)
        self._check_readable(path)
        files = {rel: info for rel, info in self._files(path).items() if rel}
        if not files:
            self._check_container(root)
            raise StorageError(f"no folder at {root!r}")
        for rel in sorted(files):
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            yield FileEntry(uri=join(root, rel), relative_path=rel, size=int(files[rel].get("size") or 0))

    def list_dirs(self, root: str) -> list[str]:
        path = self._parse(root)
        self._check_readable(path)
        with self._errors(root, "list"):
            try:
                entries = self._fs().ls(path.fs_path, detail=True, invalidate_cache=True)
            except FileNotFoundError:
                entries = []
        if not entries:
            self._check_container(root)
            raise StorageError(f"no folder at {root!r}")
        names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]
        return sorted(n for n in names if not n.startswith("."))

    def remove(self, uri: str) -> None:
        path = self._parse(uri)
        fs = self._fs()
        with self._errors(uri, "delete"):
            folders: list[str] = []
            names = sorted(self._files(path, folders).items())
            paths = [f"{path.fs_path}/{rel}" if rel else path.fs_path for rel, _ in names]
            if paths:
                fs.rm(paths)
            # Folder marker blobs (zero bytes, metadata hdi_isfolder=true), which Hadoop's ABFS driver writes for
            # every folder it creates (direct mode): deepest first. A folder that has no marker answers 404.
            if (paths or folders) and path.key and not any(rel == "" for rel, _ in names):
                folders.append(path.fs_path)
            for folder in sorted(set(folders), key=len, reverse=True):
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(folder)

    def _copy_blob(self, src: str, dst: str, size: int) -> None:
        fs = self._fs()
        if size <= STREAM_COPY_BYTES:
            fs.pipe_file(dst, fs.cat_file(src))
            return
        with fs.open(src, "rb") as reader, fs.open(dst, "wb") as writer:
            shutil.copyfileobj(reader, writer, 8 * 1024 * 1024)

    def copy_tree(self, src: str, dst: str) -> None:
        source, target = self._parse(src), self._parse(dst)
        self._check_readable(source)
        files = self._files(source)
        if not files:
            self._check_container(src)
            raise StorageError(f"nothing to copy at {src!r}: materialize the upstream asset first")
        with self._errors(dst, "copy to"):
            for rel, info in files.items():
                self._copy_blob(f"{source.fs_path}/{rel}" if rel else source.fs_path,
                                f"{target.fs_path}/{rel}" if rel else target.fs_path, int(info.get("size") or 0))

    def upload_dir(self, local_dir: str, uri: str) -> None:
        target = self._parse(uri)
        with self._errors(uri, "upload to"):
            for rel, full in _local_files(local_dir, skip_hidden=False):
                self._fs().put_file(full, f"{target.fs_path}/{rel}")

    @contextlib.contextmanager
    def atomic_dir(self, uri: str) -> Iterator[str]:
        final = self._parse(uri)
        if not final.key:
            raise StorageError(f"{uri}: an output folder cannot be a whole container")
        self._check_container(uri)
        tmp = f"{uri.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
        staging = os.path.join(self._scratch(), "staging", uuid.uuid4().hex)
        self._writing[tmp] = staging
        try:
            yield tmp
            self._commit(final, self._parse(tmp), staging)
        finally:
            self._writing.pop(tmp, None)
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(Exception):
                self.remove(tmp)

    def _commit(self, final: BlobPath, tmp: BlobPath, staging: str) -> None:
        """Replace ``final`` by what was written under ``tmp`` (and staged locally), holding the output's journal
        entry under an exclusive blob lease (:class:`~aerial_assets.storage.blob_lease.BlobLease`): see the
        module's docstring for the protocol and its guarantee."""
        from aerial_assets.storage.blob_lease import BlobLease

        written = self._files(tmp)
        staged = dict(_local_files(staging, skip_hidden=True)) if os.path.isdir(staging) else {}
        fs = self._fs()
        lease = BlobLease(fs, final.container, self._journal_key(final), final.uri)
        with self._errors(final.uri, "commit"):
            lease.acquire()
        try:
            self.remove(final.uri)
            with self._errors(final.uri, "commit"):
                for rel, info in written.items():
                    lease.check()
                    self._copy_blob(f"{tmp.fs_path}/{rel}", f"{final.fs_path}/{rel}", int(info.get("size") or 0))
                for rel, full in staged.items():
                    lease.check()
                    fs.put_file(full, f"{final.fs_path}/{rel}")
                lease.delete()
        except BaseException:
            lease.release()
            raise

    def spark_path(self, uri: str) -> str:
        """``staged``: a local path (a staging folder inside ``atomic_dir``, else a local copy of the committed
        output). ``direct``: the Hadoop URL of the blob (:func:`spark_url`), which Spark reads and writes itself;
        a committed output is checked against the commit journal first, as any reader's."""
        path = self._parse(uri)
        writing = any(uri == tmp or uri.startswith(f"{tmp}/") for tmp in list(self._writing))
        if self.spark_mode == "direct":
            if not writing:
                self._check_readable(path)
            try:
                return spark_url(self.credentials, self.spark_scheme, path.container, path.key)
            except StorageError as exc:
                raise StorageError(f"{uri}: {exc}") from None
        for tmp, staging in list(self._writing.items()):
            if uri == tmp or uri.startswith(f"{tmp}/"):
                local = os.path.join(staging, uri[len(tmp):].lstrip("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                return file_url(local)
        return file_url(self._download(path))

    def _download(self, path: BlobPath) -> str:
        """A local copy of a committed file or folder for Spark to read, reused while its blobs are unchanged."""
        self._check_readable(path)
        files = self._files(path)
        if not files:
            self._check_container(path.uri)
            raise StorageError(f"no file or folder at {path.uri!r}: materialize the upstream asset first")
        signature = hashlib.sha256(json.dumps(
            [path.uri, sorted((rel, int(i.get("size") or 0), str(i.get("etag"))) for rel, i in files.items())]
        ).encode()).hexdigest()[:24]
        local = os.path.join(self._scratch(), "inputs", signature, os.path.basename(path.key) or "root")
        if os.path.exists(local):
            return local
        part = f"{local}.part-{uuid.uuid4().hex[:8]}"
        fs = self._fs()
        with self._errors(path.uri, "download"):
            for rel in files:
                target = os.path.join(part, rel) if rel else part
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fs.get_file(f"{path.fs_path}/{rel}" if rel else path.fs_path, target)
        os.replace(part, local)
        return local

    def raster_opener(self, uri: str) -> Callable:
        """For ``rasterio.open(uri, opener=...)``: GDAL reads the raster (and probes its sidecars) through
        adlfs, by ranges, with these credentials."""
        fs = self._fs()

        def open_(name: str, mode: str = "rb"):
            try:
                path = self._parse(name)
            except StorageError:
                raise FileNotFoundError(name) from None
            try:
                return fs.open(path.fs_path, mode)
            except FileNotFoundError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise StorageError(self._describe(exc, name, "open")) from None

        return open_


def _local_files(folder: str, skip_hidden: bool) -> Iterator[tuple[str, str]]:
    """(relative path, full path) of every file below a local folder."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if skip_hidden and name.startswith("."):
                continue  # Hadoop's .crc checksums of local files
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, folder).replace(os.sep, "/"), full


# --- the URLs Spark gets in direct mode (its Hadoop settings: aerial_assets.spark.hadoop_azure) ---------

def checked_scheme(scheme: str) -> str:
    value = (scheme or "").strip().lower()
    if value not in SPARK_AZURE_SCHEMES:
        raise ConfigurationError(f"unknown AERIAL_SPARK_AZURE_SCHEME {scheme!r}: valid values: "
                                 f"{', '.join(SPARK_AZURE_SCHEMES)} (abfss: ADLS Gen2 accounts, through ABFS; wasbs: "
                                 "Blob Storage accounts, HDInsight's default file system)")
    return value


@dataclass(frozen=True)
class HadoopEndpoint:
    """How Hadoop's ABFS driver reaches a storage account, derived from the credentials' Blob endpoint.

    ``suffix``: ``core.windows.net``, or a sovereign cloud's (from a Blob endpoint ``<account>.blob.<suffix>`` or
    the connection string's ``EndpointSuffix``). ``override``: ``host:port`` for ``fs.azure.abfs.endpoint``, when
    the Blob endpoint is not named ``<account>.blob.<suffix>``: an emulator (Azurite:
    ``http://127.0.0.1:10000/<account>``), which ABFS then addresses path-style. ``secure``: False for an
    ``http://`` endpoint (or ``DefaultEndpointsProtocol=http``).
    """

    account: str
    suffix: str = "core.windows.net"
    override: str = ""
    secure: bool = True

    @classmethod
    def of(cls, credentials: AzureCredentials) -> HadoopEndpoint:
        account = credentials.account
        if not account:
            raise StorageError(f"the Spark path needs the storage account name ({ENV_ACCOUNT_NAME})")
        cs = credentials.connection_string
        suffix = connection_string_field(cs, "EndpointSuffix") or "core.windows.net"
        endpoint = (credentials.blob_endpoint or connection_string_field(cs, "BlobEndpoint")).split("?")[0].rstrip("/")
        if not endpoint:
            return cls(account, suffix, "", (connection_string_field(cs, "DefaultEndpointsProtocol") or "https").lower() != "http")
        protocol, _, rest = endpoint.partition("://")
        netloc = rest.split("/")[0]
        secure = protocol.lower() != "http"
        named = re.fullmatch(rf"{re.escape(account)}\.blob\.([^:]+)", netloc, re.IGNORECASE)
        if named:
            return cls(account, named.group(1), "", secure)
        return cls(account, "core.windows.net", netloc, secure)

    def host(self, scheme: str) -> str:
        """The host of the URLs: ``<account>.dfs.<suffix>`` (abfss) or ``<account>.blob.<suffix>`` (wasbs, the
        form the WASB driver and ABFS's Blob endpoint expect). Under an endpoint override it is
        ``<account>.dfs.core.windows.net`` whatever the scheme: the only host ABFS then takes the account name
        from (with a ``.blob.`` host the account stays unset and every request fails)."""
        if scheme == "abfss" or self.override:
            return f"{self.account}.dfs.{'core.windows.net' if self.override else self.suffix}"
        return f"{self.account}.blob.{self.suffix}"

    def scheme(self, scheme: str) -> str:
        """``abfss``/``wasbs``, or ``abfs``/``wasb`` for plain http (the secure schemes always use https)."""
        return scheme if self.secure else scheme[:-1]


def spark_url(credentials: AzureCredentials, scheme: str, container: str, key: str) -> str:
    """The Hadoop URL at which Spark reads and writes ``az://container/key`` itself (direct mode).

    - ``abfss`` (default): ``abfss://container@<account>.dfs.core.windows.net/key``, the ABFS driver, the Hadoop
      driver for ADLS Gen2 (hierarchical namespace) accounts that Databricks, Synapse and HDInsight all ship.
    - ``wasbs``: ``wasbs://container@<account>.blob.core.windows.net/key``, HDInsight's default file system, for
      Blob Storage (flat namespace) accounts. A Hadoop before 3.5 (HDInsight) serves it with its WASB driver.
      Hadoop 3.5 removed WASB (HADOOP-19778: ``NativeAzureFileSystem`` only throws), so on a 3.5 session, local
      Spark included, :func:`aerial_assets.spark.hadoop_azure.spark_hadoop_conf` maps ``wasb(s)://`` to ABFS, which serves flat-namespace
      accounts through their Blob endpoint.
    - A plain http endpoint (an emulator) gives ``abfs://`` / ``wasb://``, and with an endpoint override the
      host is ``<account>.dfs.core.windows.net`` for both schemes (:meth:`HadoopEndpoint.host`).
    """
    endpoint = HadoopEndpoint.of(credentials)
    scheme = checked_scheme(scheme)
    return f"{endpoint.scheme(scheme)}://{container}@{endpoint.host(scheme)}/{key}"
