"""Step logs in Azure Blob Storage for the ``azure`` deployment: dagster-azure's compute log manager, reachable at
any Blob endpoint. No asset code imports this; the Dagster instance loads it from ``dagster.yaml``.

dagster-azure's ``AzureBlobComputeLogManager`` builds its endpoint as ``https://<account>.blob.<suffix>/``. That
covers the public and sovereign clouds, but not a private endpoint with another host name nor the Azurite
emulator (``http://127.0.0.1:10000/<account>``) that the tests use. This subclass adds one setting,
``blob_endpoint`` (``AZURE_STORAGE_BLOB_ENDPOINT``, the same variable the storage resource reads), and otherwise
is dagster-azure's class: same credentials, same blob layout, same UI links.
"""

from __future__ import annotations

from typing import Any

from dagster import Field, Noneable, StringSource
from dagster_azure.blob.compute_log_manager import AzureBlobComputeLogManager


class BlobComputeLogManager(AzureBlobComputeLogManager):
    """``AzureBlobComputeLogManager`` with an optional ``blob_endpoint`` (an emulator, a private endpoint)."""

    def __init__(self, *args: Any, blob_endpoint: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._blob_endpoint = blob_endpoint or None
        if self._blob_endpoint:
            from azure.storage.blob import BlobServiceClient

            self._blob_client = BlobServiceClient(self._blob_endpoint, credential=self._endpoint_credential())
            self._container_client = self._blob_client.get_container_client(self._container)

    def _endpoint_credential(self) -> Any:
        """The parent's credential, in the form the SDK needs when the account is not in the host name: an
        account key as a named key (a bare key string only works with ``<account>.blob...`` URLs)."""
        from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

        secret = self._access_key_or_sas_token
        if secret:
            return AzureSasCredential(secret.lstrip("?")) if "sig=" in secret else AzureNamedKeyCredential(
                self._storage_account, secret)
        return self._blob_client.credential  # a token credential (client secret, DefaultAzureCredential)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **super().config_type(),
            "blob_endpoint": Field(Noneable(StringSource), is_required=False, default_value=None,
                                   description="Blob endpoint URL when it is not https://<account>.blob.<suffix>/ "
                                               "(Azurite, a private endpoint)"),
        }
