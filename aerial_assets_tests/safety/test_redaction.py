"""Secrets never reach a message: query strings, SAS fields, account keys, tokens and URI passwords are redacted
wherever they sit, and every project error is redacted when it is made."""

import pytest

from aerial_assets.errors import ConfigurationError, StorageError
from aerial_assets.safety.redaction import REDACTED, has_secret, redact, short

SECRET = "Zm9vYmFyc2VjcmV0"


@pytest.mark.parametrize("text", [
    f"AERIAL_DATA_ROOT=az://cont/run?sv=2024-01-01&sig={SECRET} is an Azure URI",
    f"https://acct.blob.core.windows.net/c/x.tif?se=2030&sp=r&sig={SECRET}",
    f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={SECRET};EndpointSuffix=core.windows.net",
    f"sc://host:15002/;token={SECRET}",
    f"https://user:{SECRET}@example.org/x",
    f"SharedAccessSignature={SECRET}",
    f"password: {SECRET}",
])
def test_every_kind_of_secret_is_redacted(text):
    out = redact(text)
    assert SECRET not in out and REDACTED in out
    assert redact(out) == out  # idempotent: a message redacted twice reads the same
    assert has_secret(text) and not has_secret(out)


def test_what_a_reader_needs_stays():
    assert redact("az://cont/run?sig=x") == f"az://cont/run?{REDACTED}"
    assert redact("AccountName=acct;AccountKey=k") == f"AccountName=acct;AccountKey={REDACTED}"
    plain = "no file at '/data/tiles/a?b.png': check the path"  # a '?' in a plain path is not a query
    assert redact(plain) == plain and not has_secret("az://cont/prefix")


def test_project_errors_are_redacted_when_made():
    exc = StorageError(f"cannot read az://c/p?sv=1&sig={SECRET}: refused")
    assert SECRET not in str(exc) and SECRET not in repr(exc.args)
    assert str(ConfigurationError("plain")) == "plain"


def test_short_never_formats_a_container_whole():
    huge = {"k": ["x"] * 10**6}
    assert short(huge) == "a dict of 1 item(s)"
    assert len(short("y" * 10**6)) <= 80 and short("ab") == "'ab'"
