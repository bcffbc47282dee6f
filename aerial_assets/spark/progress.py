"""Progress of long steps (featurization, scoring): done out of total, rate, time left. No Dagster import."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Reports ``done/total`` with rate and ETA through ``emit`` (the run log, the terminal)."""

    def __init__(self, total: int, what: str, emit: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.total, self.what, self.emit, self.clock = total, what, emit, clock
        self.start = clock()
        self.done = 0

    def message(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = f"{left:.0f} s left" if left == left else "time left unknown"
        return f"{self.what}: {self.done}/{self.total} tiles ({pct:.0f} %), {rate:.1f} tiles/s, {eta}"

    def advance(self, count: int) -> None:
        self.done += count
        self.emit(self.message())

    @property
    def rate(self) -> float:
        return self.done / max(self.clock() - self.start, 1e-9)
