import pytest

from aerial_assets.errors import StorageError
from aerial_assets.storage.backends import storage_for
from aerial_assets.storage.core import LocalStorage, join


def test_atomic_dir_replaces_whole_folder(tmp_path):
    store = LocalStorage()
    target = str(tmp_path / "out")
    with store.atomic_dir(target) as tmp:
        store.write_text(join(tmp, "a.txt"), "first")
    with store.atomic_dir(target) as tmp:
        store.write_text(join(tmp, "b.txt"), "second")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_write_keeps_previous_output_and_leaves_no_temp(tmp_path):
    store = LocalStorage()
    target = str(tmp_path / "out")
    with store.atomic_dir(target) as tmp:
        store.write_text(join(tmp, "good.txt"), "complete")
    with pytest.raises(RuntimeError):
        with store.atomic_dir(target) as tmp:
            store.write_text(join(tmp, "half.txt"), "partial")
            raise RuntimeError("crash mid-write")
    assert (tmp_path / "out" / "good.txt").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_bytes_is_atomic_and_listing_skips_hidden(tmp_path):
    store = LocalStorage()
    store.write_bytes(str(tmp_path / "x" / "f.bin"), b"123")
    (tmp_path / "x" / ".hidden").write_text("no")
    assert [e.relative_path for e in store.list_files(str(tmp_path))] == ["x/f.bin"]
    assert store.read_bytes(str(tmp_path / "x" / "f.bin")) == b"123"


def test_unknown_scheme_and_missing_file_are_clear():
    with pytest.raises(StorageError, match="unsupported storage URI"):
        storage_for("gopher://nowhere/x")
    with pytest.raises(StorageError, match="no file at"):
        LocalStorage().read_bytes("/nonexistent/file")


def test_azure_uris_are_served_without_reading_secrets_at_import():
    from aerial_assets.storage.azure import AzureStorage, parse
    from aerial_assets.storage.backends import raster_opener
    from aerial_assets.storage.core import is_local

    assert isinstance(storage_for("az://container/x"), AzureStorage)
    assert isinstance(storage_for("abfss://container@acct.dfs.core.windows.net/x"), AzureStorage)
    assert parse("abfss://data@acct.dfs.core.windows.net/a/b/").account == "acct"
    assert parse("az://data/a/b").fs_path == "data/a/b" and is_local("/x") and not is_local("az://data/x")
    assert raster_opener("/local/file.tif") is None and raster_opener("https://host/cog.tif") is None
    with pytest.raises(StorageError, match="not a valid container name"):
        parse("az://Bad_Name/x")


def test_azure_credentials_precedence_repr_pickle_and_redaction():
    import pickle

    from aerial_assets.storage.azure_credentials import AzureCredentials, redact

    key = "c2VjcmV0LWtleS1ub3Qtc2hvd24tYW55d2hlcmUtMTIzNDU2Nzg5MA=="
    cs = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
    creds = AzureCredentials.from_env({"AZURE_STORAGE_CONNECTION_STRING": cs, "AZURE_STORAGE_ACCOUNT_KEY": "other"})
    assert creds.kind == "connection string" and creds.account == "acct" and not creds.account_key
    assert key not in repr(creds) and key.encode() not in pickle.dumps(creds)
    assert redact(f"failed with {cs} and {key}", creds).count("***") == 2 and key not in redact(cs, creds)
    sas = AzureCredentials.from_env({"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_SAS_TOKEN": "?sv=1&sig=abc%2Bdef"})
    assert sas.kind == "SAS token" and "abc" not in redact("https://acct.blob.core.windows.net/c?sv=1&sig=abc%2Bdef", sas)
    assert AzureCredentials.from_env({"AZURE_STORAGE_ACCOUNT_NAME": "acct"}).kind == "DefaultAzureCredential"
    with pytest.raises(StorageError, match="no Azure storage account configured"):
        AzureCredentials().adlfs_kwargs()
