"""Every CSV the product writes, written one way: cells that a spreadsheet would run as a formula are neutralised.

Class names, tile ids and file paths come from users' folder names; a folder named ``=HYPERLINK(...)`` would
become a live formula in ``<algorithm>_predictions_test_set.csv`` opened in Excel or LibreOffice. The OWASP rule:
a text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``, which
spreadsheets show as text. Numbers are numbers and stay as they are. :func:`read_csv` undoes the prefix, so
the product reads back exactly what it wrote. No Dagster import.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def neutralise(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would evaluate; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return QUOTE + value
    return value


def restore(value: Any) -> Any:
    """The inverse of :func:`neutralise` (for what this module wrote)."""
    if isinstance(value, str) and value.startswith(QUOTE) and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


def _map_text(frame: pd.DataFrame, fn) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(fn)
    out.columns = [fn(c) for c in out.columns]
    if out.index.dtype == object:
        out.index = out.index.map(fn)
        out.index.name = fn(out.index.name)
    return out


def to_csv(frame: pd.DataFrame, *, index: bool = False) -> str:
    """``frame`` as CSV text with every text cell, column name and index label neutralised."""
    return _map_text(frame, neutralise).to_csv(index=index)


def read_csv(text: str, **kwargs: Any) -> pd.DataFrame:
    """A CSV written by :func:`to_csv` (or by a user), with the neutralising prefix removed."""
    frame = pd.read_csv(io.StringIO(text), **kwargs)
    return _map_text(frame, restore)
