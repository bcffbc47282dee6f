"""``make bench-ood``: how many tiles the out-of-distribution flag marks, on imagery like and unlike the training tiles.

Three runs of ``make run`` (``python -m aerial_assets.defs.run``, real Spark and the real graph), each in a data root
of its own under ``--root``:

1. **AID-trained** (``../shared/datasets/aid``, ``examples/aid_nlcd.yaml``, ``AERIAL_PRESET=fast`` by default),
   mapping NAIP vintages of ``../shared/datasets/naip_nd`` (``examples/naip_nd.yaml``). Reported: the champion's
   test split (share flagged; accuracy of all tiles, of the tiles in distribution and of those out of it) and the
   share flagged in each NAIP vintage (5 m imagery: 224 m tiles are 45 px, upsampled 5x).
2. **NAIP-trained**: training tiles cut from three other NAIP vintages (``raster_labeled_tiles``) and labelled from a
   land-cover layer made here from the ten vintages (per pixel: median NDVI below 0 is Water; NDVI varying across
   the years by more than ``--ndvi-std`` is Cultivated, rotated or harvested fields; the rest Herbaceous), mapping
   the same NAIP vintages. Reported the same way.

3. **Why unit-length features**: with the AID run's stored features of the champion's backbone and that backbone's
   window features of the NAIP vintages (computed here, one onnxruntime session), the out-of-distribution model
   fitted on raw features against the one on unit-length features (the product's), each with its threshold at the
   99th percentile of the validation tiles.

Prints one table per run and one summary table; ``benchmarks/results/bench-ood-*.json`` keeps the output.
``--reuse``: a data root whose run completed before (same arguments) is read again instead of re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.results import run_main

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
AREA = "nd_4709963"
NAIP_TRAIN_YEARS = ("2009", "2014", "2019")


def _run(env: dict[str, str], args: list[str], log: Path, reuse: bool) -> float:
    done_file = log.with_suffix(".seconds")
    if reuse and done_file.exists():
        print(f"reusing the completed run of {log.stem} ({log})", flush=True)
        return float(done_file.read_text())
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", *args], env=env, cwd=REPO,
                              stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-30:]
        raise RuntimeError(f"make run failed ({done.returncode}); its log {log} ends:\n" + "\n".join(tail))
    seconds = time.monotonic() - started
    done_file.write_text(f"{seconds:.1f}")
    return seconds


def _landcover(naip: Path, out: Path, ndvi_std: float) -> dict[str, int]:
    """The label layer (module docstring) as a GeoTIFF on the vintages' grid; returns pixels per class."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    stack, profile = [], None
    for tif in sorted(naip.glob("*.tif")):  # the vintages' grids differ by a pixel or two: all onto the first one's
        with rasterio.open(tif) as ds:
            profile = profile or ds.profile
            bands = []
            for band in (1, 4):  # red, near infrared
                grid = np.zeros((profile["height"], profile["width"]), np.float32)
                reproject(ds.read(band).astype(np.float32), grid, src_transform=ds.transform, src_crs=ds.crs,
                          dst_transform=profile["transform"], dst_crs=profile["crs"], resampling=Resampling.bilinear)
                bands.append(grid)
        red, nir = bands
        stack.append((nir - red) / np.maximum(nir + red, 1.0))
    ndvi = np.stack(stack)
    codes = np.where(np.median(ndvi, axis=0) < 0.0, 1, np.where(ndvi.std(axis=0) > ndvi_std, 2, 3)).astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=0, compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(codes, 1)
    return {name: int((codes == code).sum()) for code, name in ((1, "Water"), (2, "Cultivated"), (3, "Herbaceous"))}


def _report(root: Path, vintages: list[str]) -> tuple[dict, pd.DataFrame]:
    champion = json.loads((root / "champion_model" / "champion.json").read_text())
    folder = root / "classifier_metrics" / champion["backbone"] / champion["algorithm"]
    test = pd.read_csv(folder / f"{champion['algorithm']}_predictions_test_set.csv")
    correct = test["label"] == test["pred_label"]
    inside = test["in_distribution"].astype(bool)
    low = test[[c for c in test.columns if c.startswith("prob_")]].max(axis=1) < 0.5  # the maps' low confidence
    row = {"model": f"{champion['backbone']}|{champion['algorithm']}", "test_tiles": len(test),
           "test_ood_%": round(100 * float((~inside).mean()), 2), "accuracy_all_%": round(100 * float(correct.mean()), 2),
           "accuracy_in_%": round(100 * float(correct[inside].mean()), 2) if inside.any() else None,
           "accuracy_out_%": round(100 * float(correct[~inside].mean()), 2) if (~inside).any() else None,
           "low_conf_%": round(100 * float(low.mean()), 2),
           "accuracy_low_conf_%": round(100 * float(correct[low].mean()), 2) if low.any() else None,
           "threshold": round(champion["ood"]["threshold"], 3), "heldout": champion["ood"]["heldout"],
           "training_gsd_m": champion["ood"]["training_gsd_m"]}
    counties = []
    for year in vintages:
        key = f"{AREA}@{year}"
        summary = json.loads((root / "county_predictions" / key / "summary.json").read_text())
        trust = summary["trust"]
        counties.append({"vintage": key, "tiles": summary["n_tiles"],
                         "ood_%": round(100 * trust["n_out_of_distribution"] / summary["n_tiles"], 1),
                         "gsd_m": trust["county_gsd_m"],
                         "upsampled_%": round(100 * trust["n_upsampled"] / max(trust["n_size_known"], 1), 1)})
    return row, pd.DataFrame(counties)


def _ablation(aid_root: Path, naip: Path, vintages: list[str]) -> pd.DataFrame:
    """Raw against unit-length features (module docstring, 3)."""
    import rasterio

    from aerial_assets.backbones.inference import input_size, make_session, run_features
    from aerial_assets.imagery.rasters import grid_shape, open_info, read_tile
    from aerial_assets.training.novelty import novelty_from_totals, unit_rows

    champion = json.loads((aid_root / "champion_model" / "champion.json").read_text())
    backbone = champion["backbone"]
    stored = pd.read_parquet(aid_root / "tile_features" / backbone / "features.parquet",
                             columns=["tile_id", "features", "status"])
    catalog = pd.read_parquet(aid_root / "labeled_tiles" / "catalog.parquet", columns=["tile_id", "label", "split"])
    rows = stored[stored["status"] == "ok"].merge(catalog, on="tile_id")
    classes = sorted(rows["label"].unique())
    x = {s: np.stack(rows.loc[rows["split"] == s, "features"].to_numpy()).astype(np.float64)
         for s in ("train", "validation", "test")}
    y = rows.loc[rows["split"] == "train", "label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    session = make_session((aid_root / "backbone_models" / backbone / "model.onnx").read_bytes(), 2)
    size = input_size(session)
    county = {}
    for year in vintages:
        tif = next(iter(sorted(naip.glob(f"*_{year}*.tif"))))
        info = open_info(str(tif))
        n_rows, n_cols, px = grid_shape(info, 224.0)
        with rasterio.open(tif) as ds:
            windows = [read_tile(ds, c * px, r * px, px, size, (info.scale_lo, info.scale_hi))
                       for r in range(n_rows) for c in range(n_cols)]
        county[year] = np.concatenate([run_features(session, np.stack(windows[i:i + 64]))
                                       for i in range(0, len(windows), 64)]).astype(np.float64)
    out = []
    for unit in (False, True):
        train = unit_rows(x["train"]) if unit else x["train"]
        sums = np.zeros((len(classes), train.shape[1]))
        np.add.at(sums, y, train)

        def fourth(means, train=train):
            centred = train - means[y]
            return float(np.sum(np.sum(centred * centred, axis=1) ** 2))

        model = novelty_from_totals(train.T @ train, sums, np.bincount(y, minlength=len(classes)), fourth)
        threshold = float(np.quantile(model.distances(x["validation"], unit=unit), 0.99))
        row = {"features": "unit length (the product)" if unit else "raw", "backbone": backbone,
               "test_ood_%": round(100 * float((model.distances(x["test"], unit=unit) > threshold).mean()), 1)}
        for year, feats in county.items():
            row[f"naip_{year}_ood_%"] = round(100 * float((model.distances(feats, unit=unit) > threshold).mean()), 1)
        out.append(row)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--aid", default=str(SHARED / "aid"))
    parser.add_argument("--naip", default=str(SHARED / "naip_nd"))
    parser.add_argument("--root", default=os.environ.get("BENCH_ROOT", str(REPO / ".aerial_data" / "bench_ood")))
    parser.add_argument("--preset", default=os.environ.get("BENCH_PRESET", "fast"))
    parser.add_argument("--vintages", default="2010,2015,2020", help="NAIP years mapped by both models")
    parser.add_argument("--ndvi-std", type=float, default=0.12)
    parser.add_argument("--reuse", action="store_true", help="read completed runs again instead of re-running them")
    args = parser.parse_args(argv)
    aid, naip, root = Path(args.aid), Path(args.naip), Path(args.root)
    if not aid.is_dir() or not naip.is_dir():
        print(f"bench-ood needs {aid} and {naip} (../shared/datasets)", file=sys.stderr)
        return 2
    vintages = [v.strip() for v in args.vintages.split(",") if v.strip()]
    root.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("AERIAL_")}
    base.update({"AERIAL_PRESET": args.preset, "AERIAL_COUNTIES": str(REPO / "examples" / "naip_nd.yaml"),
                 "AERIAL_MLFLOW": "0"})
    counties = ["--counties", ",".join(f"{AREA}@{v}" for v in vintages)]

    aid_root = root / "aid_trained"
    seconds_aid = _run({**base, "AERIAL_DATA_ROOT": str(aid_root), "AERIAL_TRAINING_TILES": str(aid),
                        "AERIAL_LABEL_MAP": str(REPO / "examples" / "aid_nlcd.yaml")}, counties, root / "aid_trained.log",
                      args.reuse)

    naip_root = root / "naip_trained"
    naip_root.mkdir(exist_ok=True)
    cover = _landcover(naip, naip_root / "ndvi_landcover.tif", args.ndvi_std)
    (naip_root / "legend.yaml").write_text("classes:\n  Water: [1]\n  Cultivated: [2]\n  Herbaceous: [3]\n")
    imagery = sorted(str(p) for p in naip.glob("*.tif") if any(f"_{y}" in p.name for y in NAIP_TRAIN_YEARS))
    spec = {"imagery": imagery, "landcover": str(naip_root / "ndvi_landcover.tif"),
            "legend": str(naip_root / "legend.yaml")}
    (naip_root / "training_rasters.yaml").write_text(json.dumps(spec, indent=2))  # YAML is a superset of JSON
    seconds_naip = _run({**base, "AERIAL_DATA_ROOT": str(naip_root),
                         "AERIAL_TRAINING_RASTERS": str(naip_root / "training_rasters.yaml")}, counties,
                        root / "naip_trained.log", args.reuse)

    rows = []
    for name, data_root, seconds in (("AID-trained", aid_root, seconds_aid), ("NAIP-trained", naip_root, seconds_naip)):
        model, table = _report(data_root, vintages)
        print(f"\n## {name}: {model['model']} (make run {seconds / 60:.1f} min)")
        print(pd.DataFrame([model]).to_markdown(index=False))
        print()
        print(table.to_markdown(index=False))
        rows.append({"training": name, "test_ood_%": model["test_ood_%"],
                     "test_accuracy_all_%": model["accuracy_all_%"], "test_accuracy_in_%": model["accuracy_in_%"],
                     "test_accuracy_out_%": model["accuracy_out_%"],
                     "naip_ood_%": " / ".join(f"{v:g}" for v in table["ood_%"])})
    print(f"\nland cover made from NDVI (pixels): {cover}; NAIP training vintages {', '.join(NAIP_TRAIN_YEARS)}")
    print("\n## Raw against unit-length features (AID-trained champion's backbone; threshold: 99th percentile of "
          "AID's validation tiles)")
    print(_ablation(aid_root, naip, vintages).to_markdown(index=False))
    print(f"\n## Share of tiles out of distribution (NAIP vintages {', '.join(vintages)})")
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench-ood", main))
