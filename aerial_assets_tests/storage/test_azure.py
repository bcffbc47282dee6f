"""Azure storage, tested against Azurite (Microsoft's Blob Storage emulator, npm package ``azurite``), started here
on 127.0.0.1 with a random account key and stopped by process id.

Azurite serves the Blob endpoint only. The project never calls the ADLS Gen2 (dfs) endpoint: ``abfs://`` URIs go
through adlfs's Blob client as ``az://`` ones do, so they are tested here for real too. ``AERIAL_SPARK_STORAGE=direct``
is tested with the real hadoop-azure jars (``make jars``): Spark itself reads and writes ``wasb://`` URLs, served by
Hadoop 3.5's ABFS driver through Azurite's Blob endpoint. What is not tested here: a real Azure account,
``DefaultAzureCredential`` (no identity provider), the dfs endpoint (hierarchical namespace), ``abfss://`` and
``wasbs://`` over https, and a cluster's own hadoop-azure (HDInsight's WASB driver).
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from dagster import EnvVar, instance_for_test

from aerial_assets.defs.definitions import build_defs, build_resources, deployment_of
from aerial_assets.defs.run import Runner
from aerial_assets.errors import ConfigurationError, StorageError
from aerial_assets.storage import azure as azure_storage
from aerial_assets.storage.azure import AzureStorage
from aerial_assets.storage.azure_credentials import AzureCredentials
from aerial_assets.storage.backends import storage_for
from aerial_assets.storage.core import join, local_path

REPO = Path(__file__).resolve().parents[2]
AZURITE_VERSION = "3.37.0"  # keep in step with the Makefile's AZURITE_VERSION
AZURITE_PREFIX = REPO / ".cache" / "azurite"
ACCOUNT = "aerialtest"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _azurite_binary() -> Path:
    binary = AZURITE_PREFIX / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js/npm not found: the Azure tests run against Azurite (npm package azurite)")
    done = subprocess.run(["npm", "install", "--no-save", "--prefix", str(AZURITE_PREFIX), f"azurite@{AZURITE_VERSION}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and binary.exists(), f"npm install azurite failed: {done.stderr[-2000:]}"
    return binary


class Azurite:
    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
        self.connection_string = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
                                  f"BlobEndpoint={self.endpoint};")

    def credentials(self) -> AzureCredentials:
        return AzureCredentials(connection_string=self.connection_string)

    def store(self) -> AzureStorage:
        return AzureStorage(self.credentials())

    def create_container(self, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(self.connection_string) as service:
            service.create_container(name)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_STORAGE_", "AERIAL_"))}
        env.pop("DAGSTER_HOME", None)
        return {**env, "AZURE_STORAGE_CONNECTION_STRING": self.connection_string, "PYSPARK_PYTHON": sys.executable,
                **extra}


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    binary = _azurite_binary()
    folder = tmp_path_factory.mktemp("azurite")
    port = _free_port()
    key = base64.b64encode(os.urandom(32)).decode()
    log = open(folder / "azurite.log", "w")
    proc = subprocess.Popen(
        [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder / "data"),
         "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
        env={**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{key}"}, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"Azurite exited: {(folder / 'azurite.log').read_text()[-2000:]}"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        else:
            raise TimeoutError("Azurite did not start")
        yield Azurite(port, key)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _container(azurite: Azurite, name: str) -> str:
    azurite.create_container(name)
    return f"az://{name}"


def test_files_folders_and_atomic_replacement(azurite):
    store = azurite.store()
    root = _container(azurite, "basics")
    store.write_text(join(root, "in/a/1.txt"), "one")
    store.write_bytes(join(root, "in/b/2.bin"), b"\x00\x01")
    store.write_text(join(root, "in/.hidden"), "no")
    assert [e.relative_path for e in store.list_files(join(root, "in"))] == ["a/1.txt", "b/2.bin"]
    assert store.list_dirs(join(root, "in")) == ["a", "b"]
    assert store.read_text(join(root, "in/a/1.txt")) == "one" and store.exists(join(root, "in/a"))
    assert not store.exists(join(root, "in/nothing"))

    out = join(root, "out")
    with store.atomic_dir(out) as tmp:
        store.write_text(join(tmp, "first.txt"), "1")
    with store.atomic_dir(out) as tmp:
        store.write_text(join(tmp, "second.txt"), "2")
        assert not store.exists(join(out, "second.txt"))  # nothing visible before the commit
    assert [e.relative_path for e in store.list_files(out)] == ["second.txt"]
    with pytest.raises(RuntimeError), store.atomic_dir(out) as tmp:
        store.write_text(join(tmp, "half.txt"), "partial")
        raise RuntimeError("crash mid-write")
    assert [e.relative_path for e in store.list_files(out)] == ["second.txt"]
    assert store.list_dirs(root) == ["in", "out"]  # no temporary prefix left behind

    store.copy_tree(out, join(root, "copy"))
    assert store.read_text(join(root, "copy/second.txt")) == "2"
    store.remove(join(root, "copy"))
    assert not store.exists(join(root, "copy"))


def test_spark_paths_are_staged_locally_and_committed(azurite):
    store = azurite.store()
    root = _container(azurite, "spark")
    out = join(root, "features")
    with store.atomic_dir(out) as tmp:
        url = store.spark_path(join(tmp, "features.parquet"))  # the writing instance, as assets do
        # a file: URL, never a bare path, which Spark would resolve against a cluster's default file system (HDFS)
        assert url.startswith("file:///")
        local = local_path(url)
        assert os.path.isabs(local) and not local.startswith("az:")
        # no process-wide registration: another instance knows nothing of this instance's folder being written
        with pytest.raises(StorageError, match="no file or folder"):
            AzureStorage(azurite.credentials()).spark_path(join(tmp, "features.parquet"))
        os.makedirs(local)
        Path(local, "part-0.parquet").write_bytes(b"PAR1")
        Path(local, ".part-0.parquet.crc").write_bytes(b"crc")  # Hadoop's checksum: not uploaded
        store.write_text(join(tmp, "summary.json"), "{}")
    assert [e.relative_path for e in store.list_files(out)] == ["features.parquet/part-0.parquet", "summary.json"]
    assert not os.path.exists(local)  # staging removed
    read = store.spark_path(join(out, "features.parquet"))
    assert read.startswith("file:///")
    assert os.listdir(local_path(read)) == ["part-0.parquet"] and store.spark_path(join(out, "features.parquet")) == read
    direct = AzureStorage(azurite.credentials(), spark_mode="direct")
    # Azurite: plain http (abfs, not abfss) and the endpoint override, under which ABFS takes the account name
    # only from a <account>.dfs.core.windows.net host, whatever the scheme
    assert direct.spark_path(join(out, "features.parquet")) == \
        f"abfs://spark@{ACCOUNT}.dfs.core.windows.net/features/features.parquet"
    assert AzureStorage(azurite.credentials(), "direct", "wasbs").spark_path(join(out, "features.parquet")) == \
        f"wasb://spark@{ACCOUNT}.dfs.core.windows.net/features/features.parquet"
    azure = AzureCredentials(account_name=ACCOUNT, account_key=azurite.key)  # Azure itself: https, real hosts
    assert azure_storage.spark_url(azure, "abfss", "spark", "features/x.parquet") == \
        f"abfss://spark@{ACCOUNT}.dfs.core.windows.net/features/x.parquet"
    assert azure_storage.spark_url(azure, "wasbs", "spark", "features/x.parquet") == \
        f"wasbs://spark@{ACCOUNT}.blob.core.windows.net/features/x.parquet"


def test_a_commit_that_dies_midway_is_refused_to_readers(azurite, monkeypatch):
    store = azurite.store()
    root = _container(azurite, "journal")
    out = join(root, "model")
    with store.atomic_dir(out) as tmp:
        store.write_text(join(tmp, "a.json"), "{}")
        store.write_text(join(tmp, "b.json"), "{}")
    calls, copy = [], AzureStorage._copy_blob

    def dies_on_second(self, src, dst, size):  # the old output is already deleted when this runs
        calls.append(dst)
        if len(calls) == 2:
            raise ConnectionError("network lost")
        copy(self, src, dst, size)

    monkeypatch.setattr(AzureStorage, "_copy_blob", dies_on_second)
    with pytest.raises(StorageError, match="unreachable"), store.atomic_dir(out) as tmp:
        store.write_text(join(tmp, "a.json"), '{"v": 2}')
        store.write_text(join(tmp, "b.json"), '{"v": 2}')
    monkeypatch.undo()
    other = AzureStorage(azurite.credentials())  # another process would see the same journal
    with pytest.raises(StorageError, match=r"incomplete: a run started replacing az://journal/model .*re-materialize"):
        other.read_text(join(out, "a.json"))
    assert not other.exists(join(out, "a.json"))
    with store.atomic_dir(out) as tmp:  # re-materializing clears it
        store.write_text(join(tmp, "a.json"), '{"v": 3}')
    assert other.read_text(join(out, "a.json")) == '{"v": 3}'


def _commit_rounds(connection_string: str, uri: str, writer: int, files: int, rounds: int, barrier,
                   results) -> None:
    """One of two processes replacing the same output at the same moment, ``rounds`` times (spawned)."""
    store = AzureStorage(AzureCredentials(connection_string=connection_string))
    for round_ in range(rounds):
        with store.atomic_dir(uri) as tmp:
            for i in range(files):
                store.write_text(join(tmp, f"part-{i:03d}.txt"), f"writer {writer} round {round_}")
            barrier.wait(timeout=120)  # both commits start together
        barrier.wait(timeout=300)  # both commits are done
        if writer == 0:
            contents = [store.read_text(e.uri) for e in store.list_files(uri)]
            results.put((round_, len(contents), sorted(set(contents))))
        barrier.wait(timeout=120)


def test_two_processes_committing_one_output_at_once_leave_one_whole_commit(azurite):
    import multiprocessing

    root = _container(azurite, "race")
    out, files, rounds = join(root, "model"), 24, 3
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    writers = [context.Process(target=_commit_rounds, args=(azurite.connection_string, out, w, files, rounds, barrier,
                                                            results)) for w in (0, 1)]
    for proc in writers:
        proc.start()
    for proc in writers:
        proc.join(timeout=600)
    assert [proc.exitcode for proc in writers] == [0, 0]
    seen = sorted(results.get(timeout=10) for _ in range(rounds))
    for round_, count, contents in seen:
        # every file of one commit, and only one commit's: the two never interleaved
        assert count == files and len(contents) == 1, (round_, count, contents)
        assert contents[0].endswith(f"round {round_}")
    store = azurite.store()
    assert not any(store._fs().find(f"race/{azure_storage.JOURNAL}"))  # both commits finished
    assert store.list_dirs(root) == ["model"]  # no temporary prefix left


def _commit_slowly(connection_string: str, uri: str, files: int) -> None:
    store = AzureStorage(AzureCredentials(connection_string=connection_string))
    with store.atomic_dir(uri) as tmp:
        for i in range(files):
            store.write_bytes(join(tmp, f"part-{i:03d}.bin"), os.urandom(64 * 1024))


def test_a_killed_commit_is_refused_to_readers_and_taken_over_when_its_lease_lapses(azurite):
    import multiprocessing

    from aerial_assets.storage.blob_lease import LEASE_S, BlobLease

    store = azurite.store()
    root = _container(azurite, "killed")
    out = join(root, "features")
    with store.atomic_dir(out) as tmp:
        store.write_text(join(tmp, "old.txt"), "old")
    proc = multiprocessing.get_context("spawn").Process(
        target=_commit_slowly, args=(azurite.connection_string, out, 300))
    proc.start()
    journal = f"killed/{azure_storage.JOURNAL}"
    deadline = time.monotonic() + 300
    # the commit has started and holds its lease (the holder's record is written once the lease is taken; an
    # entry still empty has no lease yet, and the next committer would take it over at once): kill it mid-copy
    while not any(info["size"] > 0 for info in store._fs().find(journal, detail=True).values()):
        assert proc.is_alive() and time.monotonic() < deadline, "the commit finished before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with pytest.raises(StorageError, match=r"incomplete: a run started replacing az://killed/features"):
        store.read_text(join(out, "old.txt"))
    assert not store.exists(join(out, "old.txt"))
    entry = next(iter(store._fs().find(journal))).split("/", 1)[1]
    # while the dead process's lease has not lapsed, a committer waits for it and names it
    with pytest.raises(StorageError, match=rf"another process has been committing it .*pid {proc.pid} on "):
        BlobLease(store._fs(), "killed", entry, out, wait_s=1).acquire()
    started = time.monotonic()
    with store.atomic_dir(out) as tmp:  # re-materializing takes the entry over once the lease lapses
        store.write_text(join(tmp, "new.txt"), "new")
    assert time.monotonic() - started < LEASE_S + 15
    assert [e.relative_path for e in store.list_files(out)] == ["new.txt"]
    assert not any(store._fs().find(journal))


def test_every_credential_kind_and_abfs_uris(azurite):
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    root = _container(azurite, "kinds")
    azurite.store().write_text(join(root, "x.txt"), "shared")
    sas = generate_account_sas(ACCOUNT, azurite.key, ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, list=True, delete=True),
                               expiry=time.time() + 3600)
    kinds = {
        "connection string": azurite.credentials(),
        "account key": AzureCredentials(account_name=ACCOUNT, account_key=azurite.key, blob_endpoint=azurite.endpoint),
        "SAS token": AzureCredentials(account_name=ACCOUNT, sas_token=sas, blob_endpoint=azurite.endpoint),
    }
    for kind, credentials in kinds.items():
        assert credentials.kind == kind
        store = AzureStorage(credentials)
        assert store.read_text("az://kinds/x.txt") == "shared"
        assert store.read_text("abfs://kinds/x.txt") == "shared"
        assert store.read_text(f"abfss://kinds@{ACCOUNT}.dfs.core.windows.net/x.txt") == "shared"
        store.write_text(f"abfs://kinds/{kind.replace(' ', '_')}.txt", kind)
        for secret in (azurite.key, sas):
            assert secret not in repr(credentials) and secret.encode() not in pickle.dumps(store)
    names = [e.relative_path for e in AzureStorage(kinds["SAS token"]).list_files("abfs://kinds")]
    assert names == ["SAS_token.txt", "account_key.txt", "connection_string.txt", "x.txt"]
    with pytest.raises(StorageError, match="in storage account 'other' but the credentials are for 'aerialtest'"):
        azurite.store().read_text("abfss://kinds@other.dfs.core.windows.net/x.txt")


def test_wrong_key_and_missing_container_fail_clearly_without_the_secret(azurite):
    root = _container(azurite, "secure")
    azurite.store().write_text(join(root, "x.txt"), "x")
    wrong_key = base64.b64encode(os.urandom(32)).decode()
    wrong = AzureStorage(AzureCredentials(connection_string=azurite.connection_string.replace(azurite.key, wrong_key)))
    for call in (lambda: wrong.read_text("az://secure/x.txt"), lambda: wrong.exists("az://secure/x.txt"),
                 lambda: list(wrong.list_files("az://secure")), lambda: wrong.write_text("az://secure/y.txt", "y")):
        with pytest.raises(StorageError) as failure:
            call()
        message = str(failure.value)
        assert "az://secure" in message and "refused the connection string" in message
        assert "AZURE_STORAGE_CONNECTION_STRING" in message and wrong_key not in message and azurite.key not in message
        assert failure.value.__cause__ is None and failure.value.__suppress_context__
    store = azurite.store()
    for call in (lambda: store.read_text("az://nosuchcontainer/x.txt"), lambda: store.exists("az://nosuchcontainer/x"),
                 lambda: store.write_text("az://nosuchcontainer/x.txt", "x"),
                 lambda: list(store.list_files("az://nosuchcontainer/tiles"))):
        with pytest.raises(StorageError, match=r"az://nosuchcontainer/.*container 'nosuchcontainer' does not exist"):
            call()
    with pytest.raises(StorageError, match="no file at 'az://secure/missing.txt'"):
        store.read_text("az://secure/missing.txt")


def test_demo_data_is_generated_into_an_azure_data_root(azurite, monkeypatch):
    from aerial_assets.defs.resources import CountyRegistryResource, StorageResource, TrainingTilesResource
    from aerial_assets.imagery.rasters import open_info

    _container(azurite, "demo")
    # the driver writes with the resource's credentials; rasterio's reads go through the storage layer with this
    # process's environment, as on an executor
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)  # as a deployment sets it
    storage = StorageResource(data_root="az://demo/run", azure_connection_string=azurite.connection_string)
    folder, is_demo = TrainingTilesResource(demo_per_class=2, demo_size=32).resolve(storage)
    assert is_demo and folder == "az://demo/run/demo/training_tiles"
    files = [e.relative_path for e in storage_for(folder).list_files(folder)]
    assert len(files) == 12 and all(f.endswith(".jpg") for f in files)  # the .complete marker is hidden
    assert TrainingTilesResource(demo_per_class=2, demo_size=32).resolve(storage) == (folder, True)  # reused
    county = CountyRegistryResource(demo_rows=2, demo_cols=2, demo_tile_px=32).load(storage)["demo_middlesex"]
    assert county.rasters == ["az://demo/run/demo/counties/demo_middlesex.tif"]
    assert open_info(county.rasters[0]).width == 64  # rasterio reads it through the storage layer


def test_a_failed_run_names_the_uri_not_the_secret(azurite, monkeypatch, tmp_path):
    wrong_key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string.replace(azurite.key, wrong_key))
    env = {"AERIAL_DEPLOYMENT": "azure", "AERIAL_DATA_ROOT": "az://runs/out", "AERIAL_TRAINING_TILES": "az://runs/tiles",
           "AZURE_STORAGE_CONNECTION_STRING": "set"}
    defs = build_defs(env)
    with instance_for_test() as instance:
        assert not Runner(defs, instance, {}).run(["labeled_tiles"])
        text = "\n".join(str(event) for run in instance.get_runs() for event in instance.all_logs(run.run_id))
    assert "az://runs/tiles" in text and "refused the connection string" in text
    assert wrong_key not in text and azurite.key not in text


def test_deployments_select_resources_with_the_same_keys():
    local = build_resources({})
    azure = build_resources({"AERIAL_DEPLOYMENT": "azure", "AERIAL_DATA_ROOT": "az://data/run",
                             "AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_SAS_TOKEN": "sv=x&sig=y"})
    assert set(local) == set(azure) >= {"spark", "storage", "training_tiles", "counties"}
    storage = azure["storage"]
    assert isinstance(storage.azure_account_name, EnvVar) and isinstance(storage.azure_sas_token, EnvVar)
    assert storage.azure_sas_token.env_var_name == "AZURE_STORAGE_SAS_TOKEN" and not storage.azure_account_key
    with_cs = build_resources({"AERIAL_DEPLOYMENT": "azure", "AZURE_STORAGE_CONNECTION_STRING": "secret"})["storage"]
    assert with_cs.azure_connection_string.env_var_name == "AZURE_STORAGE_CONNECTION_STRING"
    with pytest.raises(ConfigurationError, match="unknown AERIAL_DEPLOYMENT 'aws': valid deployments: azure, local"):
        build_resources({"AERIAL_DEPLOYMENT": "aws"})
    with pytest.raises(ConfigurationError, match="AERIAL_DATA_ROOT=az://data/x is an Azure URI but no Azure credentials"):
        build_resources({"AERIAL_DATA_ROOT": "az://data/x"})
    # an Azure URI and Azure credentials select the Azure deployment without a switch; an explicit one wins
    implied = {"AERIAL_DATA_ROOT": "az://data/run", "AZURE_STORAGE_CONNECTION_STRING": "secret"}
    assert deployment_of(implied) == "azure" and deployment_of({}) == "local"
    assert build_resources(implied)["storage"].azure_connection_string.env_var_name == "AZURE_STORAGE_CONNECTION_STRING"
    assert deployment_of({**implied, "AERIAL_DEPLOYMENT": "local"}) == "local"
    with pytest.raises(ConfigurationError, match="is an Azure URI"):
        build_resources({**implied, "AERIAL_DEPLOYMENT": "local"})
    assert deployment_of({"AERIAL_DATA_ROOT": "/data", "AZURE_STORAGE_CONNECTION_STRING": "x"}) == "local"
    with pytest.raises(ConfigurationError, match="the azure deployment needs AZURE_STORAGE_CONNECTION_STRING"):
        build_resources({"AERIAL_DEPLOYMENT": "azure"})
    with pytest.raises(ConfigurationError, match="valid values: staged, direct"):
        build_resources({"AERIAL_DEPLOYMENT": "azure", "AZURE_STORAGE_ACCOUNT_NAME": "a", "AERIAL_SPARK_STORAGE": "x"})
    # nothing reads the environment at import time: a bad setting only fails when definitions are built
    imported = subprocess.run([sys.executable, "-c", "import aerial_assets.defs.definitions"], cwd=REPO, timeout=120,
                              env={**os.environ, "AERIAL_DEPLOYMENT": "nonsense"}, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-2000:]


def test_example_instance_config_loads_the_blob_compute_log_manager(tmp_path, monkeypatch):
    from dagster import DagsterInstance

    shutil.copy(REPO / "examples" / "azure" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    monkeypatch.setenv("AERIAL_LOG_CONTAINER", "logs")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", base64.b64encode(b"k" * 32).decode())
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        from dagster_azure.blob.compute_log_manager import AzureBlobComputeLogManager

        assert isinstance(instance.compute_log_manager, AzureBlobComputeLogManager)  # dagster-azure's, extended
    finally:
        instance.dispose()


def test_step_logs_go_to_azurite_through_dagster_azures_compute_log_manager(azurite, tmp_path, monkeypatch):
    """The example instance config of the azure deployment, pointed at Azurite: a step's stdout and stderr are
    uploaded as blobs by dagster-azure's manager, and the UI's log reader reads them back from there."""
    from azure.storage.blob import BlobServiceClient
    from dagster import DagsterInstance, job, op

    config = yaml.safe_load((REPO / "examples" / "azure" / "dagster.yaml").read_text())
    config["compute_logs"]["config"]["blob_endpoint"] = {"env": "AZURE_STORAGE_BLOB_ENDPOINT"}
    config["compute_logs"]["config"]["upload_interval"] = None
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    _container(azurite, "logs")
    for name, value in {"AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": azurite.key,
                        "AZURE_STORAGE_BLOB_ENDPOINT": azurite.endpoint, "AERIAL_LOG_CONTAINER": "logs"}.items():
        monkeypatch.setenv(name, value)

    @op
    def talk() -> None:
        print("hello from a step")
        print("a warning on stderr", file=sys.stderr)

    @job
    def chatty():
        talk()

    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        manager = instance.compute_log_manager
        assert type(manager).__name__ == "BlobComputeLogManager"
        result = chatty.execute_in_process(instance=instance)
        assert result.success
        client = BlobServiceClient.from_connection_string(azurite.connection_string)
        blobs = {b.name: client.get_blob_client("logs", b.name).download_blob().readall()
                 for b in client.get_container_client("logs").list_blobs(name_starts_with="aerial-assets-logs/")}
        out = [data for name, data in blobs.items() if name.endswith(".out")]
        err = [data for name, data in blobs.items() if name.endswith(".err")]
        assert any(b"hello from a step" in data for data in out), sorted(blobs)
        assert any(b"a warning on stderr" in data for data in err), sorted(blobs)
        assert not _find_secret(tmp_path, [azurite.key.encode()])  # the key stays in the environment
    finally:
        instance.dispose()


def _find_secret(folder: Path, secrets: list[bytes]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [str(path) for secret in secrets if secret in data]
    return hits


def test_whole_graph_with_tiles_rasters_and_outputs_in_azurite(azurite, tiny_tiles, tiny_county, tmp_path):
    """Everything in Azurite: training tiles, the county raster, the registry and every output. Local Spark has no
    hadoop-azure connector: executors read tiles and rasters through adlfs, Spark's own Parquet goes through the
    staged local folders."""
    import rasterio

    store = azurite.store()
    _container(azurite, "aerial")
    store.upload_dir(str(tiny_tiles), "az://aerial/inputs/tiles")
    raster, _ = tiny_county
    store.write_bytes("az://aerial/inputs/rasters/tiny.tif", Path(raster).read_bytes())
    store.write_text("az://aerial/inputs/counties.yaml", yaml.safe_dump(
        {"counties": {"tiny": {"name": "Tiny county", "rasters": ["az://aerial/inputs/rasters/tiny.tif"]}}}))
    home = tmp_path / "dagster_home"
    env = azurite.env(AERIAL_DEPLOYMENT="azure", AERIAL_DATA_ROOT="az://aerial/run", DAGSTER_HOME=str(home),
                      AERIAL_TRAINING_TILES="az://aerial/inputs/tiles", AERIAL_COUNTIES="az://aerial/inputs/counties.yaml")
    done = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", "--preset", "fast", "--backbones", "mobilenet_v2",
                           "--algorithms", "logistic_regression"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    board = store.read_text("az://aerial/run/model_leaderboard/leaderboard.csv")
    assert "mobilenet_v2,logistic_regression" in board
    champion = yaml.safe_load(store.read_text("az://aerial/run/champion_model/champion.json"))
    assert champion["algorithm"] == "logistic_regression"
    parts = [e for e in store.list_files("az://aerial/run/county_predictions/tiny/predictions.parquet")
             if e.relative_path.endswith(".parquet")]
    tables = [pq.read_table(io.BytesIO(store.read_bytes(e.uri))) for e in parts]
    assert sum(t.num_rows for t in tables) == 30 and all(b"geo" in t.schema.metadata for t in tables)
    with rasterio.open("az://aerial/run/county_land_use_map/tiny/land_use.tif",
                       opener=store.raster_opener("az://aerial/run/county_land_use_map/tiny/land_use.tif")) as ds:
        assert (ds.height, ds.width) == (5, 6)
    catalog = pq.read_table(io.BytesIO(store.read_bytes("az://aerial/run/labeled_tiles/catalog.parquet"))).to_pandas()
    assert catalog["uri"].str.startswith("az://aerial/inputs/tiles/").all()
    every = [e.relative_path for e in store.list_files("az://aerial")]
    assert not [p for p in every if ".tmp-" in p]  # every temporary prefix committed or removed
    assert not any(azurite.store()._fs().find(f"aerial/{azure_storage.JOURNAL}"))  # every commit finished
    # no local output: the run history only (Dagster's home, MLflow's SQLite database)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".aerial_data", "dagster_home"]
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / ".aerial_data").rglob("*") if p.is_file()) == [
        ".aerial_data/mlflow/mlflow.db"]
    # MLflow's artifacts in the data root: the classifier's run and the registered champion
    artifacts = [e.relative_path for e in store.list_files("az://aerial/run/mlflow/artifacts")]
    assert any(p.endswith("/artifacts/confusion.png") for p in artifacts)
    assert any(p.endswith("/artifacts/model/MLmodel") for p in artifacts)
    tile = next(p for p in sorted(Path(tiny_tiles).rglob("*.png")))
    served = subprocess.run([sys.executable, "-c", (
        "import sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri('sqlite:///{tmp_path}/.aerial_data/mlflow/mlflow.db')\n"
        "model = mlflow.pyfunc.load_model('models:/aerial_assets_land_use@champion')\n"
        f"print(model.predict(pd.DataFrame({{'image': [open('{tile}', 'rb').read()]}}))['label'][0])")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]  # the model read back from Azurite's blobs
    assert served.stdout.strip().splitlines()[-1] in champion["classes"]

    # the key appears nowhere: event log, compute logs, the run's output, the outputs themselves
    secrets = [azurite.key.encode(), azurite.key.rstrip("=").encode()]
    assert not _find_secret(home, secrets)
    assert not _find_secret(tmp_path / ".aerial_data", secrets)  # MLflow's database
    assert not [s for s in secrets if s in (done.stdout + done.stderr).encode()]
    assert not [e.uri for e in store.list_files("az://aerial/run") if any(s in store.read_bytes(e.uri) for s in secrets)]


# --- AERIAL_SPARK_STORAGE=direct: Spark's own reads and writes, through hadoop-azure's ABFS driver ----------


def test_hadoop_conf_of_direct_mode_for_each_credential_kind():
    from aerial_assets.spark.hadoop_azure import spark_hadoop_conf
    from aerial_assets.storage.azure import spark_url

    key = base64.b64encode(os.urandom(32)).decode()
    sas = "sv=2024-11-04&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&sig=abc%2Bdef%3D"
    blob, dfs = f"{ACCOUNT}.blob.core.windows.net", f"{ACCOUNT}.dfs.core.windows.net"
    # an account key: SharedKey, scoped to the URLs' host; wasb(s):// served by ABFS on Hadoop 3.5
    conf = spark_hadoop_conf(AzureCredentials(account_name=ACCOUNT, account_key=key), "wasbs", "3.5.0")
    assert conf[f"fs.azure.account.auth.type.{blob}"] == "SharedKey" and conf[f"fs.azure.account.key.{blob}"] == key
    assert conf["fs.wasbs.impl"] == "org.apache.hadoop.fs.azurebfs.SecureAzureBlobFileSystem"
    assert conf["fs.AbstractFileSystem.wasb.impl"] == "org.apache.hadoop.fs.azurebfs.Abfs"
    assert conf[f"fs.azure.account.hns.enabled.{blob}"] == "false"
    assert conf[f"fs.azure.fns.account.service.type.{blob}"] == "BLOB"
    assert not {"fs.azure.abfs.endpoint", "fs.azure.always.use.https"} & set(conf)  # Azure itself: no override
    assert key not in repr(conf) and key not in str(conf)
    hdinsight = spark_hadoop_conf(AzureCredentials(account_name=ACCOUNT, account_key=key), "wasbs", "3.3.4.5.1")
    assert "fs.wasbs.impl" not in hdinsight and hdinsight[f"fs.azure.account.key.{blob}"] == key  # its own WASB
    # a SAS token: ABFS's fixed SAS; abfss on Azure lets ABFS detect the account's namespace
    assert spark_hadoop_conf(AzureCredentials(account_name=ACCOUNT, sas_token="?" + sas), "abfss") == {
        f"fs.azure.account.auth.type.{dfs}": "SAS", f"fs.azure.sas.fixed.token.{dfs}": sas}
    from_cs = AzureCredentials(connection_string=f"BlobEndpoint=https://{blob};SharedAccessSignature={sas}")
    assert spark_hadoop_conf(from_cs, "wasbs")[f"fs.azure.sas.fixed.token.{blob}"] == sas
    # an emulator's endpoint: path-style override, plain http, the Blob endpoint only
    emulator = AzureCredentials(account_name=ACCOUNT, account_key=key, blob_endpoint=f"http://127.0.0.1:10000/{ACCOUNT}")
    conf = spark_hadoop_conf(emulator, "abfss")
    assert conf["fs.azure.abfs.endpoint"] == "127.0.0.1:10000" and conf["fs.azure.always.use.https"] == "false"
    assert conf[f"fs.azure.fns.account.service.type.{dfs}"] == "BLOB" and conf[f"fs.azure.account.key.{dfs}"] == key
    assert spark_url(emulator, "abfss", "data", "a/b") == f"abfs://data@{dfs}/a/b"
    # a sovereign cloud: its suffix, no override
    china = AzureCredentials(account_name=ACCOUNT, account_key=key, blob_endpoint=f"https://{ACCOUNT}.blob.core.chinacloudapi.cn")
    assert spark_url(china, "abfss", "data", "a") == f"abfss://data@{ACCOUNT}.dfs.core.chinacloudapi.cn/a"
    assert spark_url(china, "wasbs", "data", "a") == f"wasbs://data@{ACCOUNT}.blob.core.chinacloudapi.cn/a"
    assert "fs.azure.abfs.endpoint" not in spark_hadoop_conf(china, "wasbs")
    with pytest.raises(ConfigurationError, match="neither AccountKey nor SharedAccessSignature"):
        spark_hadoop_conf(AzureCredentials(connection_string=f"BlobEndpoint=https://{blob};"))
    with pytest.raises(ConfigurationError, match="unknown AERIAL_SPARK_AZURE_SCHEME 'hdfs'"):
        spark_hadoop_conf(emulator, "hdfs")
    assert spark_hadoop_conf(AzureCredentials(account_name=ACCOUNT)) == {}  # DefaultAzureCredential: the cluster's

    resources = build_resources({"AERIAL_DEPLOYMENT": "azure", "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
                                 "AERIAL_SPARK_STORAGE": "direct", "AERIAL_SPARK_AZURE_SCHEME": "wasbs",
                                 "AERIAL_SPARK_JARS": "/opt/jars/a.jar,/opt/jars/b.jar"})
    assert resources["storage"].spark_azure_scheme == "wasbs" and resources["spark"].storage == resources["storage"]
    assert resources["spark"].default_conf()["spark.jars"] == "/opt/jars/a.jar,/opt/jars/b.jar"
    assert build_resources({})["storage"].spark_azure_scheme == "abfss"
    with pytest.raises(ConfigurationError, match="unknown AERIAL_SPARK_AZURE_SCHEME 'wasb'"):
        build_resources({"AERIAL_DEPLOYMENT": "azure", "AZURE_STORAGE_ACCOUNT_NAME": "a", "AERIAL_SPARK_AZURE_SCHEME": "wasb"})


def _fake_session(master: str, has_abfs: bool, hadoop: dict[str, str] | None = None):
    """What :func:`configure_spark_session` uses of a classic session: its master, Hadoop version and config."""
    from types import SimpleNamespace as NS

    values = dict(hadoop or {})
    conf = NS(getClassByNameOrNull=lambda name: name if has_abfs else None, get=values.get, set=values.__setitem__)
    jvm = NS(org=NS(apache=NS(hadoop=NS(util=NS(VersionInfo=NS(getVersion=lambda: "3.5.0"))))))
    return NS(sparkContext=NS(master=master, _jvm=jvm, _jsc=NS(hadoopConfiguration=lambda: conf))), values


def test_direct_mode_needs_hadoop_azure_and_a_credential_spark_can_use():
    from aerial_assets.defs.resources import StorageResource
    from aerial_assets.spark.hadoop_azure import configure_spark_session

    key = base64.b64encode(os.urandom(32)).decode()
    creds = AzureCredentials(account_name=ACCOUNT, account_key=key)
    for master, advice in (("local[2]", "run `make jars`"), ("yarn", "spark.jars.packages=org.apache.hadoop:hadoop-"
                                                             "azure:3.5.0,org.hdrhistogram:HdrHistogram:2.1.12")):
        with pytest.raises(ConfigurationError, match="no hadoop-azure") as failure:
            configure_spark_session(_fake_session(master, has_abfs=False)[0], creds, "wasbs")
        assert advice in str(failure.value) and key not in str(failure.value)
    session, hadoop = _fake_session("local[2]", has_abfs=True)
    assert configure_spark_session(session, creds, "wasbs")
    assert hadoop[f"fs.azure.account.key.{ACCOUNT}.blob.core.windows.net"] == key
    assert hadoop["fs.wasb.impl"] == "org.apache.hadoop.fs.azurebfs.AzureBlobFileSystem"
    # DefaultAzureCredential: only the cluster's own hadoop-azure settings can authenticate Spark
    managed = AzureCredentials(account_name=ACCOUNT)
    with pytest.raises(ConfigurationError, match=r"no credential for storage account 'aerialtest'.*auth\.type.*OAuth"):
        configure_spark_session(_fake_session("yarn", has_abfs=True)[0], managed)
    cluster, _ = _fake_session("yarn", True, {f"fs.azure.account.auth.type.{ACCOUNT}.dfs.core.windows.net": "OAuth"})
    assert configure_spark_session(cluster, managed)
    # the resource applies it in direct mode only
    resource = StorageResource(data_root="az://data/run", azure_account_name=ACCOUNT, azure_account_key=key,
                               spark_storage="direct")
    session, hadoop = _fake_session("local[2]", has_abfs=True)
    assert resource.configure_spark(session) and hadoop[f"fs.azure.account.key.{ACCOUNT}.dfs.core.windows.net"] == key
    staged = StorageResource(data_root="az://data/run", azure_account_name=ACCOUNT, azure_account_key=key)
    assert not staged.configure_spark(_fake_session("local[2]", has_abfs=False)[0])


def _hadoop_azure_jars() -> list[str]:
    """The jars ``make jars`` fetches (pom.xml: hadoop-azure 3.5.0 and what it needs), fetched here if missing."""
    from aerial_assets.spark.session import bundled_hadoop_version, local_jars

    if local_jars():
        return local_jars()
    if bundled_hadoop_version() != "3.5.0":
        pytest.skip(f"this pyspark carries Hadoop {bundled_hadoop_version()}; the jars of `make jars` (pom.xml) are "
                    "hadoop-azure 3.5.0, the 4.x line's: direct mode is not built for this Spark line")
    if not shutil.which("mvn"):
        pytest.skip("Maven (mvn) not found: direct mode needs the hadoop-azure jars that `make jars` fetches into "
                    ".cache/jars (pom.xml)")
    done = subprocess.run(["make", "jars"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and local_jars(), f"make jars failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return local_jars()


def test_whole_graph_in_direct_mode_spark_reads_and_writes_azurite_itself(azurite, tiny_tiles, tiny_county, tmp_path):
    """``AERIAL_SPARK_STORAGE=direct`` with the real hadoop-azure jars: Spark itself reads the Parquet outputs,
    writes the county tiles and reads and writes the pyspark.ml models in Azurite, at ``wasb://`` URLs (HDInsight's
    default file system; Hadoop 3.5 serves them with ABFS through the Blob endpoint); executors write the feature
    and GeoParquet parts and read tiles, rasters and models through the storage layer, with the credentials of their environment (local Spark: the driver's).
    Spark's own event log shows the paths it used; the key appears nowhere."""
    import re

    import rasterio
    from azure.storage.blob import BlobServiceClient

    assert any(os.path.basename(j).startswith("hadoop-azure-") for j in _hadoop_azure_jars())
    store = azurite.store()
    _container(azurite, "direct")
    store.upload_dir(str(tiny_tiles), "az://direct/inputs/tiles")
    raster, _ = tiny_county
    store.write_bytes("az://direct/inputs/rasters/tiny.tif", Path(raster).read_bytes())
    store.write_text("az://direct/inputs/counties.yaml", yaml.safe_dump(
        {"counties": {"tiny": {"name": "Tiny county", "rasters": ["az://direct/inputs/rasters/tiny.tif"]}}}))
    home, events, conf_dir, cwd = (tmp_path / name for name in ("dagster_home", "events", "spark_conf", "cwd"))
    for folder in (events, conf_dir, cwd):
        folder.mkdir()
    # Spark's event log (through SPARK_CONF_DIR's spark-defaults.conf): the paths Spark itself read and wrote
    (conf_dir / "spark-defaults.conf").write_text(f"spark.eventLog.enabled true\nspark.eventLog.dir {events.as_uri()}\n"
                                                  "spark.eventLog.compress false\n")  # plain text, to search
    env = azurite.env(AERIAL_DEPLOYMENT="azure", AERIAL_DATA_ROOT="az://direct/run", DAGSTER_HOME=str(home),
                      AERIAL_TRAINING_TILES="az://direct/inputs/tiles", AERIAL_COUNTIES="az://direct/inputs/counties.yaml",
                      AERIAL_SPARK_STORAGE="direct", AERIAL_SPARK_AZURE_SCHEME="wasbs", SPARK_CONF_DIR=str(conf_dir))
    done = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", "--preset", "fast", "--backbones", "mobilenet_v2",
                           "--algorithms", "logistic_regression"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # the outputs, read back from Azurite
    board = store.read_text("az://direct/run/model_leaderboard/leaderboard.csv")
    assert "mobilenet_v2,logistic_regression" in board
    champion = yaml.safe_load(store.read_text("az://direct/run/champion_model/champion.json"))
    assert champion["algorithm"] == "logistic_regression"
    parts = [e for e in store.list_files("az://direct/run/county_predictions/tiny/predictions.parquet")
             if e.relative_path.endswith(".parquet")]
    tables = [pq.read_table(io.BytesIO(store.read_bytes(e.uri))) for e in parts]
    assert sum(t.num_rows for t in tables) == 30 and all(b"geo" in t.schema.metadata for t in tables)
    land_use = "az://direct/run/county_land_use_map/tiny/land_use.tif"
    with rasterio.open(land_use, opener=store.raster_opener(land_use)) as ds:
        assert (ds.height, ds.width) == (5, 6)

    # Spark read and wrote the wasb:// URLs itself; nothing went through the staged mode's local folders
    log = "\n".join(p.read_text(errors="replace") for p in events.rglob("*") if p.is_file())
    base = f"wasb://direct@{ACCOUNT}.dfs.core.windows.net/run"
    assert f"{base}/county_tiles/tiny.tmp-" in log  # written in place, under the commit's temporary prefix
    for read in ("tile_features/mobilenet_v2/features.parquet", "county_tiles/tiny/tiles.parquet",
                 "county_predictions/tiny/predictions.parquet"):
        assert f"{base}/{read}" in log, read
    assert "aerial-spark-io-" not in log

    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blobs = {b.name: dict(b.metadata or {})
                 for b in service.get_container_client("direct").list_blobs(include=["metadata"])}
    tiles = "run/county_tiles/tiny/tiles.parquet"
    spark_parts = [n for n in blobs if re.fullmatch(rf"{tiles}/part-\d{{5}}-[0-9a-f-]+-c000\.snappy\.parquet", n)]
    assert spark_parts and f"{tiles}/_SUCCESS" in blobs  # Spark's own part files
    for dataset in ("tile_features/mobilenet_v2/features.parquet", "county_predictions/tiny/predictions.parquet"):
        # the executors' own files (spark/part_files.py), one per task, straight into the commit's temporary prefix
        task_parts = [n for n in blobs if n.startswith(f"run/{dataset}/")]
        assert task_parts and all(re.fullmatch(rf"run/{dataset}/part-\d{{5}}-\d+-[0-9a-f]{{8}}\.parquet", n)
                                  for n in task_parts), (dataset, task_parts)
    model = "run/land_use_classifiers/mobilenet_v2/logistic_regression/pipeline_model"
    assert any(re.fullmatch(rf"{model}/metadata/part-00000-[0-9a-f-]+-c000\.txt", n) for n in blobs)
    assert any(n.startswith(f"{model}/stages/") and n.endswith("_SUCCESS") for n in blobs)
    assert blobs.get("run/county_tiles", {}).get("hdi_isfolder") == "true"  # a folder ABFS made in the container
    assert not [n for n in blobs if ".tmp-" in n]  # every temporary prefix, its folder markers too, removed
    assert not [n for n in blobs if n.startswith(f"{azure_storage.JOURNAL}/")]  # every commit finished
    # no local output: MLflow's SQLite database only (run history, like Dagster's home); its artifacts in the data root
    assert [str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file()] == [".aerial_data/mlflow/mlflow.db"]
    assert any(n.startswith("run/mlflow/artifacts/") and n.endswith("/model/MLmodel") for n in blobs)

    # the key appears nowhere: Spark's event log, Dagster's records and step logs, the run's output, the outputs
    secrets = [azurite.key.encode(), azurite.key.rstrip("=").encode()]
    assert not _find_secret(events, secrets) and not _find_secret(home, secrets) and not _find_secret(cwd, secrets)
    assert not [s for s in secrets if s in (done.stdout + done.stderr).encode()]
    assert not [e.uri for e in store.list_files("az://direct/run") if any(s in store.read_bytes(e.uri) for s in secrets)]
