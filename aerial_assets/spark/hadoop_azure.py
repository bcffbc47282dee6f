"""Spark's own access to Azure storage (``AERIAL_SPARK_STORAGE=direct``): the Hadoop settings of the ABFS driver
for the project's credentials, and setting them on a session. No Dagster import.

In ``spark/`` because it configures Spark sessions; what URL Spark is given for an ``az://`` output
(:func:`aerial_assets.storage.azure.spark_url`) stays with the storage that hands it out.
"""

from __future__ import annotations

import contextlib
import re

from aerial_assets.errors import ConfigurationError
from aerial_assets.spark.jobs import is_connect
from aerial_assets.storage.azure import HadoopEndpoint, checked_scheme
from aerial_assets.storage.azure_credentials import (
    ENV_ACCOUNT_KEY,
    ENV_CONNECTION_STRING,
    ENV_SAS_TOKEN,
    AzureCredentials,
    connection_string_field,
)

ABFS = "org.apache.hadoop.fs.azurebfs.AzureBlobFileSystem"
HADOOP_AZURE_PACKAGES = ("org.apache.hadoop:hadoop-azure:{hadoop}", "org.hdrhistogram:HdrHistogram:2.1.12")
PYSPARK_HADOOP = "3.5.0"  # the Hadoop inside pyspark 4.3.0, which pom.xml's hadoop-azure matches


def _hadoop_at_least(version: str, wanted: tuple[int, int]) -> bool:
    numbers = tuple(int(n) for n in re.findall(r"\d+", version or "")[:2])
    return bool(numbers) and numbers >= wanted


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
    scheme = checked_scheme(scheme)
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
    key = credentials.account_key or connection_string_field(cs, "AccountKey")
    sas = credentials.sas_token or connection_string_field(cs, "SharedAccessSignature")
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
    if is_connect(session):
        return False
    context = session.sparkContext
    hadoop = context._jsc.hadoopConfiguration()
    version = str(context._jvm.org.apache.hadoop.util.VersionInfo.getVersion())
    if hadoop.getClassByNameOrNull(ABFS) is None:
        raise ConfigurationError(missing_driver_message(str(context.master), version))
    conf = spark_hadoop_conf(credentials, scheme, version)
    endpoint = HadoopEndpoint.of(credentials)
    host = endpoint.host(checked_scheme(scheme))
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

