"""Small helpers every asset uses to write its folder and describe it."""


import json
from typing import Any

import pandas as pd

from aerial_assets.storage import Storage, join


def write_json(store: Storage, folder: str, name: str, payload: dict[str, Any]) -> None:
    store.write_text(join(folder, name), json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json(store: Storage, folder: str, name: str) -> dict[str, Any]:
    return json.loads(store.read_text(join(folder, name)))


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A pandas frame as a markdown table (no tabulate dependency)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row.values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
