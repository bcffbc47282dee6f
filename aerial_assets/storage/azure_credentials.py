"""Azure storage credentials: which kind the environment holds, the account and endpoint they name, and the
secrets to keep out of every message. No Dagster import: executors build them from their own environment.

A connection string, an account key, a SAS token, or ``DefaultAzureCredential`` (managed identity, workload identity,
az login) when only the account name is set, in adlfs's order of precedence. Pickling keeps no secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from aerial_assets.errors import StorageError

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT_NAME = "AZURE_STORAGE_ACCOUNT_NAME"
ENV_ACCOUNT_KEY = "AZURE_STORAGE_ACCOUNT_KEY"
ENV_SAS_TOKEN = "AZURE_STORAGE_SAS_TOKEN"
ENV_BLOB_ENDPOINT = "AZURE_STORAGE_BLOB_ENDPOINT"


def connection_string_field(connection_string: str, name: str) -> str:
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
        name = connection_string_field(self.connection_string, "AccountName")
        if name:
            return name
        endpoint = self.blob_endpoint or connection_string_field(self.connection_string, "BlobEndpoint")
        match = re.match(r"^\w+://([^/.:]+)\.blob\.", endpoint) or re.match(r"^\w+://[^/]+/([^/?]+)", endpoint)
        return match.group(1) if match else ""

    @property
    def endpoint(self) -> str:
        """The Blob endpoint requests go to, for messages (without any query string, so never a SAS)."""
        endpoint = self.blob_endpoint or connection_string_field(self.connection_string, "BlobEndpoint")
        if not endpoint and self.account:
            protocol = connection_string_field(self.connection_string, "DefaultEndpointsProtocol") or "https"
            suffix = connection_string_field(self.connection_string, "EndpointSuffix") or "core.windows.net"
            endpoint = f"{protocol}://{self.account}.blob.{suffix}"
        return endpoint.split("?")[0].rstrip("/")

    def secrets(self) -> list[str]:
        values = [self.connection_string, self.account_key, self.sas_token.lstrip("?"),
                  connection_string_field(self.connection_string, "AccountKey"),
                  connection_string_field(self.connection_string, "SharedAccessSignature")]
        for sas in (self.sas_token, connection_string_field(self.connection_string, "SharedAccessSignature")):
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
