"""Benchmark result files, and the docs page generated from them.

Every bench script runs its ``main`` under :func:`recorded`: what it prints still goes to the terminal, and is also
kept, with the machine it ran on, in ``benchmarks/results/<name>-<date>-<commit>.json`` (``BENCH_RESULTS`` moves the
folder). ``python -m benchmarks.results`` (``make docs`` runs it) renders the newest file of each benchmark into
``docs/benchmarks/latest.md``: its tables as tables, the rest of its output as text. A run that failed (non-zero
status or an exception) writes no file, so the page only shows complete runs.

No Dagster or Spark import: the versions are read from installed package metadata.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("BENCH_RESULTS", REPO / "benchmarks" / "results"))
PAGE = REPO / "docs" / "benchmarks" / "latest.md"
BENCHMARKS = {
    "bench-accuracy": "The model comparison on AID-30 (50/50 split, seed 0): accuracy, macro-F1, calibration, times.",
    "bench-county": "A Middlesex-size county (65,563 tiles) and half of it: time per stage and peak memory.",
    "bench-features": "Featurization speed per backbone: bare onnxruntime against `tile_features` on Spark; engines.",
    "bench-ood": "Out-of-distribution flags: AID-trained and NAIP-trained models on NAIP vintages, AID's test split.",
    "bench-cluster": "Scale-out: local Spark against standalone clusters of 1 and 2 workers, YARN; fixed cost.",
}
PACKAGES = ("pyspark", "dagster", "onnxruntime", "synapseml", "numpy")


class _Tee(io.TextIOBase):
    def __init__(self, stream) -> None:
        self.stream, self.buffer_text = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.buffer_text.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _java() -> str:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        return (done.stderr or done.stdout).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        return round(kib / 2**20, 1)
    except (OSError, AttributeError):
        return None


def machine() -> dict:
    """What the numbers depend on: CPU, cores, memory, OS, Python, Java and the main packages' versions."""
    return {"cpu": _cpu(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "java": _java(), "packages": {p: _version(p) for p in PACKAGES if _version(p)}}


def commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=30)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tables(output: str) -> list[list[str]]:
    """The markdown tables in a benchmark's output, each as its lines (consecutive lines starting with ``|``)."""
    found, current = [], []
    for line in output.splitlines():
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return [t for t in found if len(t) >= 3]


def write_result(name: str, output: str, argv: list[str], seconds: float, folder: Path = RESULTS) -> Path:
    now = dt.datetime.now(dt.UTC)
    sha = commit()
    record = {"name": name, "date": now.strftime("%Y-%m-%d"), "time": now.strftime("%H:%M:%SZ"), "commit": sha,
              "argv": argv, "seconds": round(seconds, 1), "machine": machine(), "tables": tables(output),
              "output": output}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{record['date']}-{sha}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def run_main(name: str, main, argv: list[str] | None = None, folder: Path | None = None) -> int:
    """``sys.exit(run_main("bench-x", main))``: ``main``'s status, and a result file only when it is 0."""
    tee = _Tee(sys.stdout)
    start = time.perf_counter()
    with contextlib.redirect_stdout(tee):
        status = main(argv)
    if not status:
        path = write_result(name, tee.buffer_text.getvalue(), list(sys.argv[1:] if argv is None else argv),
                            time.perf_counter() - start, folder or RESULTS)
        print(f"\nresult file: {path}")
    return status or 0


def latest(folder: Path = RESULTS) -> dict[str, dict]:
    """The newest result of each benchmark (by date, then time)."""
    newest: dict[str, dict] = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        record["file"] = path.name
        key = (record["date"], record.get("time", ""))
        if record["name"] not in newest or key > (newest[record["name"]]["date"], newest[record["name"]].get("time", "")):
            newest[record["name"]] = record
    return newest


def _machine_line(m: dict) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
    return (f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB; {m.get('os')}; Python "
            f"{m.get('python')}; {m.get('java')}; {packages}")


def page(folder: Path = RESULTS) -> str:
    newest = latest(folder)
    lines = ["<!-- generated by python -m benchmarks.results (make docs) from benchmarks/results/*.json -->", "",
             "# Latest results", "",
             "The newest result file of each benchmark, as its script printed it, with the machine it ran on. "
             "Machines are shared and noisy: compare ratios measured side by side in one run, never numbers of "
             "different runs. Run one with its `make` target; the file lands in `benchmarks/results/`.", ""]
    for name, about in BENCHMARKS.items():
        lines += [f"## {name}", "", about, ""]
        record = newest.get(name)
        if record is None:
            lines += [f"No result file yet: `make {name}` writes one.", ""]
            continue
        args = " ".join(record["argv"]) or "(defaults)"
        lines += [f"`make {name}` {args}, {record['date']}, commit `{record['commit']}`, "
                  f"{record['seconds'] / 60:.1f} min; file `{record['file']}`.", "",
                  f"Machine: {_machine_line(record['machine'])}.", ""]
        for table in record["tables"]:
            lines += [*table, ""]
        lines += ["??? note \"Full output\"", "", "    ```text",
                  *(f"    {line}" for line in record["output"].rstrip().splitlines()), "    ```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Render docs/benchmarks/latest.md from the result files.")
    parser.add_argument("--check", action="store_true", help="write nothing; fail when the page is stale")
    args = parser.parse_args(argv)
    text = page()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"stale: {PAGE.relative_to(REPO)}; run `make docs`", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    if not PAGE.exists() or PAGE.read_text() != text:
        PAGE.write_text(text)
        print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
