"""``make bench-county``: a Middlesex-size county (65,563 tiles) end to end on local Spark, and half of it.

Trains the champion on the demo tiles, generates a synthetic tiled GeoTIFF county (seeded), then runs
tiling, featurization + prediction (MobileNetV2) and the map, printing wall time per stage and the peak
memory (RSS) of the whole process tree: this process, the Spark JVM and every Python worker.
The county is painted at 4 m per pixel (56 px per 224 m tile) to keep generation short; every tile is
still resampled to the backbone's 224 px input, so inference cost is that of 1 m imagery.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.memory import PeakMemory
from benchmarks.results import run_main

TILES_FULL = 65_563
COLS = 257


def write_synthetic_county(path: str, n_tiles: int, tile_px: int, resolution: float, seed: int = 0) -> int:
    """A tiled GeoTIFF with exactly ``n_tiles`` non-empty tiles (the rest of the last row is nodata).

    Tiles are drawn from a pool of painted tiles per class (painting 65 k tiles one by one would take
    longer than scoring them), placed by the demo's land-cover layout, and written one tile-row at a time.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from aerial_assets.imagery import demo_data

    rows = -(-n_tiles // COLS)
    layout = demo_data.county_layout(rows, COLS, seed)
    rng = np.random.default_rng(seed)
    pool = {c: [np.moveaxis(demo_data.paint_tile(name, rng, tile_px), -1, 0) for _ in range(16)]
            for c, name in enumerate(demo_data.DEMO_CLASSES)}
    profile = {"driver": "GTiff", "width": COLS * tile_px, "height": rows * tile_px, "count": 3, "dtype": "uint8",
               "crs": demo_data.DEMO_CRS, "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate", "BIGTIFF": "IF_SAFER",
               "transform": from_origin(demo_data.DEMO_ORIGIN[0], demo_data.DEMO_ORIGIN[1], resolution, resolution)}
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(rows):
            strip = np.zeros((3, tile_px, COLS * tile_px), np.uint8)
            for c in range(COLS):
                if r * COLS + c >= n_tiles:
                    break
                tile = pool[int(layout[r, c])][int(rng.integers(16))]
                strip[:, :, c * tile_px:(c + 1) * tile_px] = np.maximum(tile, 1)  # 0 is nodata
            dst.write(strip, window=Window(0, r * tile_px, COLS * tile_px, tile_px))
    return rows


def bare_window_loop(model_bytes: bytes, raster: str, n_tiles: int, tile_px: int, batch: int = 8,
                     threads: int = 2) -> float:
    """Tiles per second of a bare loop over the county's first ``n_tiles`` windows, in one process: read each
    window resampled to the backbone's input (as scoring does), then onnxruntime on ``threads`` threads. The
    yardstick the end-to-end rate is compared with, measured in the same run on the same machine."""
    import rasterio

    from aerial_assets.backbones.inference import input_size, make_session, run_features
    from aerial_assets.imagery.rasters import read_tile

    session = make_session(model_bytes, threads)
    size = input_size(session)
    run_features(session, np.zeros((batch, size, size, 3), np.uint8))  # warm-up, as Spark's workers are warm
    with rasterio.open(raster) as ds:
        per_row = ds.width // tile_px
        offsets = [((i % per_row) * tile_px, (i // per_row) * tile_px) for i in range(n_tiles)]
        started = time.monotonic()
        for i in range(0, n_tiles, batch):
            images = np.stack([read_tile(ds, c, r, tile_px, size, (0.0, 255.0)) for c, r in offsets[i:i + batch]])
            run_features(session, images)
    return n_tiles / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiles", type=int, default=TILES_FULL)
    parser.add_argument("--sizes", default="1.0,0.5", help="fractions of --tiles to run, side by side")
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--bare-tiles", type=int, default=8000, help="windows in the bare loop (the yardstick)")
    parser.add_argument("--ood-cost", action=argparse.BooleanOptionalAction, default=True,
                        help="score the first county again without, then with, the out-of-distribution score")
    args = parser.parse_args(argv)

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_county_")
    os.makedirs(workdir, exist_ok=True)
    os.environ["AERIAL_DATA_ROOT"] = os.path.join(workdir, "data")
    os.environ.pop("AERIAL_TRAINING_TILES", None)
    registry = os.path.join(workdir, "counties.yaml")
    os.environ["AERIAL_COUNTIES"] = registry
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from dagster import DagsterInstance

    from aerial_assets.defs.definitions import build_defs
    from aerial_assets.defs.partitions import county_partitions
    from aerial_assets.defs.run import Runner, prepare_home
    from aerial_assets.imagery.counties import County, render_registry

    env = dict(os.environ)
    prepare_home(env)
    tile_px = round(224 / args.resolution)
    sizes = [float(s) for s in args.sizes.split(",")]
    counties = {}
    for frac in sizes:
        key = f"bench_{int(round(frac * 100))}pct"
        path = os.path.join(workdir, f"{key}.tif")
        n = int(round(args.tiles * frac))
        started = time.monotonic()
        if not os.path.exists(path):
            write_synthetic_county(path, n, tile_px, args.resolution)
        print(f"generated {key}: {n} tiles in {time.monotonic() - started:.0f} s ({os.path.getsize(path) / 1e6:.0f} MB)",
              flush=True)
        counties[key] = (County(key, key, [path]), n)
    with open(registry, "w") as handle:
        handle.write(render_registry({k: c for k, (c, _) in counties.items()}))

    defs = build_defs(env)
    instance = DagsterInstance.get()
    runner = Runner(defs, instance, {})
    print("training the champion on the demo tiles ...", flush=True)
    ok = runner.run(["labeled_tiles"]) and runner.run(["backbone_models", "tile_features"], "mobilenet_v2")
    from dagster import MultiPartitionKey

    ok = ok and runner.run(["land_use_classifiers", "classifier_metrics"],
                           MultiPartitionKey({"backbone": "mobilenet_v2", "algorithm": "logistic_regression"}))
    ok = ok and runner.run(["model_leaderboard", "champion_model"])
    if not ok:
        print("training failed", file=sys.stderr)
        return 1
    instance.add_dynamic_partitions(county_partitions.name, list(counties))
    rows = []
    with PeakMemory() as memory:
        for key, (_, n) in counties.items():
            memory.reset()
            times = {}
            for asset in ("county_tiles", "county_predictions", "county_land_use_map"):
                started = time.monotonic()
                if not runner.run([asset], key):
                    print(f"{asset} failed for {key}", file=sys.stderr)
                    return 1
                times[asset] = time.monotonic() - started
            rows.append((key, n, times, memory.peak))
            print("peak memory by process: " + ", ".join(f"{k} {v / 2**30:.2f} GiB"
                                                          for k, v in sorted(memory.breakdown.items())), flush=True)
    first_key, (first_county, first_n) = next(iter(counties.items()))
    ood_cost = _ood_cost(defs, instance, first_key) if args.ood_cost else None
    print("bare loop over the county's windows (the yardstick) ...", flush=True)
    model = Path(os.environ["AERIAL_DATA_ROOT"], "backbone_models", "mobilenet_v2", "model.onnx").read_bytes()
    bare = bare_window_loop(model, first_county.rasters[0], min(args.bare_tiles, first_n), tile_px)
    print()
    print("| county | tiles | tiling s | featurize + predict s | map s | total s | tiles/s | peak memory (PSS, process tree) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, n, t, peak in rows:
        total = sum(t.values())
        print(f"| {key} | {n} | {t['county_tiles']:.0f} | {t['county_predictions']:.0f} | "
              f"{t['county_land_use_map']:.0f} | {total:.0f} | {n / total:.0f} | {peak / 2**30:.2f} GiB |")
    print()
    print("| rate | tiles/s | ratio to the bare loop |")
    print("|---|---:|---:|")
    print(f"| bare loop: read window + onnxruntime, one process, 2 threads ({min(args.bare_tiles, first_n)} "
          f"windows) | {bare:.0f} | 1.00 |")
    for key, n, t, _ in rows:
        print(f"| {key} end to end (tiling, scoring, map) | {n / sum(t.values()):.0f} | "
              f"{n / sum(t.values()) / bare:.2f} |")
    if len(rows) == 2:
        (_, n0, t0, p0), (_, n1, t1, p1) = rows
        print(f"\nratio full/half: tiles {n0 / n1:.2f}, time {sum(t0.values()) / sum(t1.values()):.2f}, "
              f"peak memory {p0 / p1:.2f}")
    if ood_cost is not None:
        without, with_score = ood_cost
        print(f"\nout-of-distribution score, {first_key} ({first_n} tiles) scored again, side by side:\n")
        print("| county_predictions | s | tiles/s |")
        print("|---|---:|---:|")
        print(f"| without the score (ood_score=False) | {without:.0f} | {first_n / without:.0f} |")
        print(f"| with the score (the default) | {with_score:.0f} | {first_n / with_score:.0f} |")
        print(f"\ncost of the score: {100 * (with_score / without - 1):+.1f} % of the scoring time")
    print(f"work folder: {workdir}")
    return 0


def _ood_cost(defs, instance, key: str) -> tuple[float, float] | None:
    """Seconds of ``county_predictions[key]`` without the out-of-distribution score, then with it (both after a
    first scoring of the county, so neither pays for cold caches)."""
    from aerial_assets.defs.run import Runner

    seconds = []
    for flag in (False, True):
        runner = Runner(defs, instance, {"ops": {"county_predictions": {"config": {"ood_score": flag}}}})
        started = time.monotonic()
        if not runner.run(["county_predictions"], key):
            print(f"county_predictions failed for {key} (ood_score={flag})", file=sys.stderr)
            return None
        seconds.append(time.monotonic() - started)
    return seconds[0], seconds[1]


if __name__ == "__main__":
    sys.exit(run_main("bench-county", main))
