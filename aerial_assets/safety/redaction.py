"""Secrets out of every message: one function that every error, log line and metadata value goes through.

Users paste SAS URLs (``az://container/prefix?sv=...&sig=...``), connection strings (``...;AccountKey=...``) and
Spark Connect URLs with tokens into settings; a message that names the setting must not repeat the secret.
:func:`redact` keeps what a reader needs to recognise the value (scheme, host, path) and replaces the rest by
``<redacted>``. :func:`short` keeps user data structures out of messages (a YAML alias bomb printed whole is
hundreds of millions of characters). Pure Python, imported by :mod:`aerial_assets.errors`: no project imports.
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"
# A URI's query string (everything after "?" up to whitespace or a closing quote/bracket): SAS tokens live there.
_QUERY = re.compile(r"(?P<uri>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s?'\"<>]*)\?(?!<redacted>)[^\s'\"<>)\]]+")
# key=value pairs that are secrets wherever they appear: SAS fields, connection-string keys, tokens, passwords.
_SECRET_PAIR = re.compile(
    r"(?i)\b(?P<key>sig|signature|accountkey|sharedaccesssignature|sharedaccesskey|token|password|pwd|secret|"
    r"client_secret|access_token|api_key|apikey)(?P<sep>\s*[=:]\s*)(?P<value>(?!<redacted>)[^\s;&'\"<>,)\]]+)")
# userinfo in a URI (scheme://user:password@host)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"<>]+:[^/\s@'\"<>]+@")


def redact(text: object) -> str:
    """``text`` with query strings of URIs, ``sig=``/``AccountKey=``/``token=``-like values and URI passwords
    replaced by ``<redacted>``. Idempotent; safe on any string."""
    out = str(text)
    out = _QUERY.sub(lambda m: f"{m.group('uri')}?{REDACTED}", out)
    out = _SECRET_PAIR.sub(lambda m: f"{m.group('key')}{m.group('sep')}{REDACTED}", out)
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", out)


def has_secret(text: str) -> bool:
    """Whether :func:`redact` would change ``text`` (a URI setting that carries a credential)."""
    return redact(text) != text


def short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: user data named in a message, never printed whole.

    Containers are described by type and size before anything is formatted, so a huge (or alias-expanded)
    structure costs nothing to describe."""
    if isinstance(value, dict | list | tuple | set | frozenset):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    text = repr(value) if not isinstance(value, str) or len(value) <= 4 * limit else repr(value[: 4 * limit])
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
