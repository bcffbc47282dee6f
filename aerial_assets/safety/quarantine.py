"""Quarantine reasons counted for a message: "54 x unreadable tile: no file at ..." instead of a guess.

Reasons name their file (``no file at '/data/t/a.png'``); counting them as written gives one group per file.
:func:`reason_counts` groups them by their wording with quoted names and paths left out. No Dagster import.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_NAMES = re.compile(r"('[^']*'|\"[^\"]*\"|[^\s,;:()]*[/\\][^\s,;:()]*)")


def reason_group(reason: str) -> str:
    """``reason`` with quoted names and paths replaced by ``...``."""
    return " ".join(_NAMES.sub("...", str(reason)).split()) or "(no reason)"


def reason_counts(reasons: Iterable[str]) -> dict[str, int]:
    """Reason groups by count, most frequent first."""
    return dict(Counter(reason_group(r) for r in reasons).most_common())


def reasons_text(reasons: Iterable[str], limit: int = 4) -> str:
    """``"54 x unreadable tile: no file at ...; 2 x empty file"`` (the ``limit`` most frequent groups)."""
    counts = reason_counts(reasons)
    shown = [f"{n} x {group}" for group, n in list(counts.items())[:limit]]
    more = len(counts) - limit
    return "; ".join(shown) + (f"; and {more} other reason(s)" if more > 0 else "")
