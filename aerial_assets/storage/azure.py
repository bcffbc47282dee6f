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
    Errors name the URI and the kind of credential, never its value (:func:`redact`).

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
    driver of hadoop-azure; :func:`spark_hadoop_conf` is the Hadoop configuration it needs for these
    credentials, which :func:`configure_spark_session` sets on a classic session at run time (Databricks and
    HDInsight clusters, and Spark Connect servers, carry their own). Executors still write GeoParquet parts and
    read tiles, rasters and models through this module, with the credentials of their own environment.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from aerial_assets.errors import ConfigurationError, StorageError
from aerial_assets.settings import SPARK_AZURE_SCHEMES, SPARK_MODES
from aerial_assets.storage.core import AZURE_SCHEMES, FileEntry, Storage, file_url, join

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT_NAME = "AZURE_STORAGE_ACCOUNT_NAME"
ENV_ACCOUNT_KEY = "AZURE_STORAGE_ACCOUNT_KEY"
ENV_SAS_TOKEN = "AZURE_STORAGE_SAS_TOKEN"
ENV_BLOB_ENDPOINT = "AZURE_STORAGE_BLOB_ENDPOINT"
ABFS = "org.apache.hadoop.fs.azurebfs.AzureBlobFileSystem"
HADOOP_AZURE_PACKAGES = ("org.apache.hadoop:hadoop-azure:{hadoop}", "org.hdrhistogram:HdrHistogram:2.1.12")
JOURNAL = ".aerial-commits"
STREAM_COPY_BYTES = 64 * 1024 * 1024
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
_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


def _cs_field(connection_string: str, name: str) -> str:
    for part in connection_string.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return ""


@dataclass(frozen=True)
class AzureCredentials:
    """How to reach one storage account. Secrets are kept out of ``repr`` and out of pickles."""

    account_name: str = ""
    blob_endpoint: str = ""  # only for emulators and sovereign clouds, e.g. http://127.0.0.1:10000/devstoreaccount1
    connection_string: str = field(default="", repr=False)
    account_key: str = field(default="", repr=False)
    sas_token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AzureCredentials:
        """The credentials in ``env`` (default: this process's environment), in adlfs's order of precedence:
        connection string, then account key, then SAS token, else DefaultAzureCredential."""
        env = os.environ if env is None else env
        return cls(
            account_name=env.get(ENV_ACCOUNT_NAME, ""),
            blob_endpoint=env.get(ENV_BLOB_ENDPOINT, ""),
            connection_string=env.get(ENV_CONNECTION_STRING, ""),
            account_key="" if env.get(ENV_CONNECTION_STRING) else env.get(ENV_ACCOUNT_KEY, ""),
            sas_token="" if env.get(ENV_CONNECTION_STRING) or env.get(ENV_ACCOUNT_KEY) else env.get(ENV_SAS_TOKEN, ""),
        )

    def __reduce__(self):
        # Never pickle a secret (for example into a Spark closure): the other side uses its own environment.
        return (AzureCredentials.from_env, ())

    @property
    def kind(self) -> str:
        if self.connection_string:
            return "connection string"
        if self.account_key:
            return "account key"
        if self.sas_token:
            return "SAS token"
        return "DefaultAzureCredential"

    @property
    def source(self) -> str:
        """Where the credential comes from, for error messages (the variable, never its value)."""
        return {
            "connection string": ENV_CONNECTION_STRING,
            "account key": f"{ENV_ACCOUNT_NAME} + {ENV_ACCOUNT_KEY}",
            "SAS token": f"{ENV_ACCOUNT_NAME} + {ENV_SAS_TOKEN}",
            "DefaultAzureCredential": f"{ENV_ACCOUNT_NAME} (DefaultAzureCredential: managed identity, "
                                      "AZURE_CLIENT_ID/SECRET/TENANT_ID or az login)",
        }[self.kind]

    @property
    def account(self) -> str:
        """The storage account name, from the settings, the connection string or the endpoint."""
        if self.account_name:
            return self.account_name
        name = _cs_field(self.connection_string, "AccountName")
        if name:
            return name
        endpoint = self.blob_endpoint or _cs_field(self.connection_string, "BlobEndpoint")
        match = re.match(r"^\w+://([^/.:]+)\.blob\.", endpoint) or re.match(r"^\w+://[^/]+/([^/?]+)", endpoint)
        return match.group(1) if match else ""

    @property
    def endpoint(self) -> str:
        """The Blob endpoint requests go to, for messages (without any query string, so never a SAS)."""
        endpoint = self.blob_endpoint or _cs_field(self.connection_string, "BlobEndpoint")
        if not endpoint and self.account:
            protocol = _cs_field(self.connection_string, "DefaultEndpointsProtocol") or "https"
            suffix = _cs_field(self.connection_string, "EndpointSuffix") or "core.windows.net"
            endpoint = f"{protocol}://{self.account}.blob.{suffix}"
        return endpoint.split("?")[0].rstrip("/")

    def secrets(self) -> list[str]:
        values = [self.connection_string, self.account_key, self.sas_token.lstrip("?"),
                  _cs_field(self.connection_string, "AccountKey"),
                  _cs_field(self.connection_string, "SharedAccessSignature")]
        for sas in (self.sas_token, _cs_field(self.connection_string, "SharedAccessSignature")):
            values += re.findall(r"(?:^|[?&])sig=([^&;]+)", sas)
        out = set()
        for value in values:
            if len(value) >= 6:
                out.update({value, quote(value, safe=""), unquote(value)})
        return sorted(out, key=len, reverse=True)

    def adlfs_kwargs(self) -> dict[str, object]:
        endpoint = self.blob_endpoint.rstrip("/")
        if self.connection_string:
            return {"connection_string": self.connection_string}
        if not self.account:
            raise StorageError(f"no Azure storage account configured: set {ENV_ACCOUNT_NAME} (with a key, a SAS "
                               f"token or a managed identity) or {ENV_CONNECTION_STRING}")
        if self.account_key:
            if endpoint:
                protocol = endpoint.split("://")[0]
                return {"connection_string": f"DefaultEndpointsProtocol={protocol};AccountName={self.account};"
                                             f"AccountKey={self.account_key};BlobEndpoint={endpoint};"}
            return {"account_name": self.account, "account_key": self.account_key}
        if self.sas_token:
            if endpoint:
                return {"connection_string": f"BlobEndpoint={endpoint};SharedAccessSignature={self.sas_token.lstrip('?')}"}
            return {"account_name": self.account, "sas_token": self.sas_token}
        kwargs: dict[str, object] = {"account_name": self.account, "anon": False}
        if endpoint:
            kwargs["account_host"] = endpoint.split("://", 1)[-1]
        return kwargs


def redact(text: str, credentials: AzureCredentials | None) -> str:
    """``text`` with every secret of ``credentials`` (and any ``sig=`` of a SAS) replaced by ``***``."""
    for secret in (credentials.secrets() if credentials else []):
        text = text.replace(secret, "***")
    text = re.sub(r"(?i)(sig=)[^&\s;'\"]+", r"\1***", text)
    return re.sub(r"(?i)(AccountKey=)[^;\s'\"]+", r"\1***", text)


# --- clients ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _filesystem(credentials: AzureCredentials):
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
        self.spark_scheme = _checked_scheme(spark_scheme)
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
        return _filesystem(self.credentials)

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


# --- Spark's own Azure access (direct mode) ----------------------------------------------------------------

PYSPARK_HADOOP = "3.5.0"  # the Hadoop inside pyspark 4.3.0, which pom.xml's hadoop-azure matches


def _checked_scheme(scheme: str) -> str:
    value = (scheme or "").strip().lower()
    if value not in SPARK_AZURE_SCHEMES:
        raise ConfigurationError(f"unknown AERIAL_SPARK_AZURE_SCHEME {scheme!r}: valid values: "
                                 f"{', '.join(SPARK_AZURE_SCHEMES)} (abfss: ADLS Gen2 accounts, through ABFS; wasbs: "
                                 "Blob Storage accounts, HDInsight's default file system)")
    return value


def _hadoop_at_least(version: str, wanted: tuple[int, int]) -> bool:
    numbers = tuple(int(n) for n in re.findall(r"\d+", version or "")[:2])
    return bool(numbers) and numbers >= wanted


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
        suffix = _cs_field(cs, "EndpointSuffix") or "core.windows.net"
        endpoint = (credentials.blob_endpoint or _cs_field(cs, "BlobEndpoint")).split("?")[0].rstrip("/")
        if not endpoint:
            return cls(account, suffix, "", (_cs_field(cs, "DefaultEndpointsProtocol") or "https").lower() != "http")
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
      Spark included, :func:`spark_hadoop_conf` maps ``wasb(s)://`` to ABFS, which serves flat-namespace
      accounts through their Blob endpoint.
    - A plain http endpoint (an emulator) gives ``abfs://`` / ``wasb://``, and with an endpoint override the
      host is ``<account>.dfs.core.windows.net`` for both schemes (:meth:`HadoopEndpoint.host`).
    """
    endpoint = HadoopEndpoint.of(credentials)
    scheme = _checked_scheme(scheme)
    return f"{endpoint.scheme(scheme)}://{container}@{endpoint.host(scheme)}/{key}"


class HadoopConf(dict):
    """Hadoop settings by name. Some values are secrets (an account key, a SAS): repr shows the names only."""

    def __repr__(self) -> str:
        return f"HadoopConf({sorted(self)})"

    __str__ = __repr__


def spark_hadoop_conf(credentials: AzureCredentials, scheme: str = "abfss",
                      hadoop_version: str = PYSPARK_HADOOP) -> HadoopConf:
    """The Hadoop configuration a Spark session needs to read and write :func:`spark_url` URLs with these
    credentials (``hadoop_version``: the session's Hadoop).

    - Credentials, scoped to the URLs' host: an account key (``AZURE_STORAGE_ACCOUNT_KEY`` or ``AccountKey`` of
      the connection string) as ``SharedKey``; else a SAS token (``AZURE_STORAGE_SAS_TOKEN`` or
      ``SharedAccessSignature``) as ABFS's fixed SAS (``fs.azure.sas.fixed.token.<host>``); a connection
      string with neither is a ConfigurationError. ``DefaultAzureCredential`` gives no credential setting: the
      cluster's own hadoop-azure configuration must authenticate (OAuth with a managed identity, HDInsight's
      core-site), which :func:`configure_spark_session` checks.
    - ``wasbs`` on Hadoop 3.5 or later: ``fs.wasb(s).impl`` and ``fs.AbstractFileSystem.wasb(s).impl`` map to
      ABFS (WASB was removed); an older Hadoop keeps its own WASB driver, which reads the same key setting
      (a SAS for WASB is ``fs.azure.sas.<container>.<host>``, not set here).
    - ``wasbs``, or any endpoint override: a flat-namespace account through the Blob endpoint
      (``fs.azure.account.hns.enabled.<host>=false``, ``fs.azure.fns.account.service.type.<host>=BLOB``); an
      emulator has no dfs endpoint at all. ``abfss`` on Azure itself lets ABFS detect the account's kind.
    - Derived from a custom Blob endpoint: ``fs.azure.abfs.endpoint`` (emulator), and for plain http
      ``fs.azure.always.use.https=false`` with the JDK's HTTP client. These three are process-wide Hadoop
      settings (ABFS reads them without an account scope).
    """
    endpoint = HadoopEndpoint.of(credentials)
    scheme = _checked_scheme(scheme)
    host = endpoint.host(scheme)
    conf = HadoopConf()
    if scheme == "wasbs" and _hadoop_at_least(hadoop_version, (3, 5)):
        conf.update({
            "fs.wasb.impl": ABFS,
            "fs.wasbs.impl": "org.apache.hadoop.fs.azurebfs.SecureAzureBlobFileSystem",
            "fs.AbstractFileSystem.wasb.impl": "org.apache.hadoop.fs.azurebfs.Abfs",
            "fs.AbstractFileSystem.wasbs.impl": "org.apache.hadoop.fs.azurebfs.Abfss",
        })
    if scheme == "wasbs" or endpoint.override:
        conf[f"fs.azure.account.hns.enabled.{host}"] = "false"
        conf[f"fs.azure.fns.account.service.type.{host}"] = "BLOB"
    if endpoint.override:
        conf["fs.azure.abfs.endpoint"] = endpoint.override
    if not endpoint.secure:
        conf["fs.azure.always.use.https"] = "false"
        conf["fs.azure.networking.library"] = "JDK_HTTP_URL_CONNECTION"
    cs = credentials.connection_string
    key = credentials.account_key or _cs_field(cs, "AccountKey")
    sas = credentials.sas_token or _cs_field(cs, "SharedAccessSignature")
    if key:
        conf[f"fs.azure.account.auth.type.{host}"] = "SharedKey"
        conf[f"fs.azure.account.key.{host}"] = key
    elif sas:
        conf[f"fs.azure.account.auth.type.{host}"] = "SAS"
        conf[f"fs.azure.sas.fixed.token.{host}"] = sas.lstrip("?")
    elif cs:
        raise ConfigurationError(
            f"AERIAL_SPARK_STORAGE=direct: the connection string ({ENV_CONNECTION_STRING}) of storage account "
            f"{endpoint.account!r} has neither AccountKey nor SharedAccessSignature; Spark's ABFS driver takes an "
            f"account key (SharedKey) or a SAS token (fixed SAS), or the cluster's own OAuth settings")
    return conf


def missing_driver_message(master: str, hadoop_version: str) -> str:
    """What to do when a session asked for direct mode has no ABFS driver on its class path."""
    if (master or "").startswith("local"):
        return ("AERIAL_SPARK_STORAGE=direct: this local Spark session has no hadoop-azure (the ABFS driver, "
                f"{ABFS}) on its class path: run `make jars` (Maven copies the jars that pom.xml pins into "
                ".cache/jars, which local sessions then load), or name the jars in AERIAL_SPARK_JARS, or use "
                "AERIAL_SPARK_STORAGE=staged")
    packages = ",".join(p.format(hadoop=hadoop_version or PYSPARK_HADOOP) for p in HADOOP_AZURE_PACKAGES)
    return (f"AERIAL_SPARK_STORAGE=direct: the Spark cluster ({master}, Hadoop {hadoop_version or '?'}) has no "
            f"hadoop-azure (the ABFS driver) on its class path: give it spark.jars.packages={packages} (hadoop-azure "
            "at the cluster's Hadoop version), or the jars in AERIAL_SPARK_JARS, or use AERIAL_SPARK_STORAGE=staged")


def configure_spark_session(session, credentials: AzureCredentials, scheme: str = "abfss") -> bool:
    """Give a classic Spark session what direct mode needs (:func:`spark_hadoop_conf`), at run time; returns
    False, doing nothing, for a Spark Connect session.

    Fails at once (ConfigurationError) when the session has no ABFS driver on its class path (saying to run
    ``make jars``, or which ``spark.jars.packages`` a cluster needs) or no credential for the account. The
    settings go on ``sparkContext.hadoopConfiguration()``, never into Spark's conf: Spark's redaction pattern
    does not match ``fs.azure.account.key.*``, so a key there would show in the event log and the environment
    page; executors get the Hadoop configuration inside Spark's own broadcast of it for each read and write.
    A Spark Connect client cannot set the server's Hadoop configuration: the cluster itself must be set up for
    the account (Databricks: Unity Catalog or the cluster's Spark config; HDInsight: its core-site), and
    nothing is checked here.
    """
    from aerial_assets.spark.jobs import is_connect

    if is_connect(session):
        return False
    context = session.sparkContext
    hadoop = context._jsc.hadoopConfiguration()
    version = str(context._jvm.org.apache.hadoop.util.VersionInfo.getVersion())
    if hadoop.getClassByNameOrNull(ABFS) is None:
        raise ConfigurationError(missing_driver_message(str(context.master), version))
    conf = spark_hadoop_conf(credentials, scheme, version)
    endpoint = HadoopEndpoint.of(credentials)
    host = endpoint.host(_checked_scheme(scheme))
    if not any(name.startswith("fs.azure.account.auth.type") for name in conf) and not any(
            hadoop.get(name) for name in (f"fs.azure.account.auth.type.{host}", "fs.azure.account.auth.type",
                                          f"fs.azure.account.key.{host}")):
        raise ConfigurationError(
            f"AERIAL_SPARK_STORAGE=direct: Spark has no credential for storage account {endpoint.account!r}: the "
            f"ABFS driver is given an account key ({ENV_ACCOUNT_KEY}, or AccountKey in {ENV_CONNECTION_STRING}) or a "
            f"SAS token ({ENV_SAS_TOKEN}); with {credentials.kind}, configure the cluster's hadoop-azure itself "
            f"(fs.azure.account.auth.type.{host}=OAuth with a managed identity or a service principal)")
    for name, value in conf.items():
        hadoop.set(name, value)
    if endpoint.override:
        # ABFS logs an ERROR ("Failed to parse the date") for each emulator response whose Last-Modified time
        # is missing (Azurite's listings): noise, not a failure
        with contextlib.suppress(Exception):
            jvm = context._jvm
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
                "org.apache.hadoop.fs.azurebfs.utils.DateTimeUtils", jvm.org.apache.logging.log4j.Level.OFF)
    return True


# --- adlfs with bounded retries and timeouts ---------------------------------------------------------------

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
