"""Peak memory of a benchmark's whole process tree (this process, the Spark JVM, every Python worker)."""

from __future__ import annotations

import threading
import time

import psutil


class PeakMemory:
    """Samples the memory of this process and all its descendants every ``interval`` seconds.

    Uses PSS (proportional set size) where the OS reports it: forked Python workers share pages, and
    summing their RSS would count those pages once per worker.
    """

    def __init__(self, interval: float = 1.0, pid: int | None = None):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.pid = pid  # the root of the sampled tree: this process by default
        self.breakdown: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            me = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            total, parts = 0, {}
            try:
                tree = [me, *me.children(recursive=True)]
            except psutil.Error:
                return
            for proc in tree:
                try:
                    info = proc.memory_full_info()
                    size = getattr(info, "pss", info.rss)
                    name = "java (Spark JVM)" if "java" in proc.name() else (
                        "this process" if proc.pid == me.pid else "python workers")
                    parts[name] = parts.get(name, 0) + size
                    total += size
                except psutil.Error:
                    pass
            if total > self.peak:
                self.peak, self.breakdown = total, parts
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak, self.breakdown = 0, {}

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
