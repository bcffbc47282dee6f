"""``make bench-accuracy``: the model comparison on AID-30 (stratified 50/50 split, seed 0), as a table.

Runs the real asset graph (the same assets and Runner as ``make run``) on ``../shared/datasets/aid``
(or ``--data``): catalog with ``test_fraction=0.5``, every backbone's features with 8 rotated/flipped
views (reused on later runs when already computed for the same catalog), then the default preset's
settings (``make run``'s: ``aerial_assets.training.presets``) and every other backbone x algorithm x views setting,
and finally the leaderboard and champion. Prints one row per setting: test accuracy, macro-F1, expected
calibration error, validation macro-F1, fit seconds, the seconds of the whole classifier run (fit, search and
evaluation), the featurization seconds that setting needs (its views' share of its backbone's features) and
their sum, so accuracy per second is visible; then the featurization cost per backbone and the default
preset's wall time on this data (catalog + its features + its classifiers, counties aside).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

from aerial_assets.training.presets import DEFAULT_PRESET
from benchmarks.results import run_main

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "aid"


def _settings(value: str) -> list[tuple[int, str]]:
    """"1,8,4a" -> [(1, average), (8, average), (4, augment)]."""
    out = []
    for item in value.split(","):
        item = item.strip()
        out.append((int(item[:-1]), "augment") if item.endswith("a") else (int(item), "average"))
    return out


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=Warning, module=r"dagster\..*")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("AERIAL_TRAINING_TILES", str(DEFAULT_DATA)))
    parser.add_argument("--root", default=os.environ.get("BENCH_ROOT", str(REPO / ".aerial_data" / "bench_accuracy")))
    parser.add_argument("--backbones", default=os.environ.get(
        "BENCH_BACKBONES", "mobilenet_v2,efficientnet_lite2,mobilenet_v2+efficientnet_lite0+squeezenet1_1"),
        help="backbones compared besides the preset's")
    parser.add_argument("--algorithms", default=os.environ.get("BENCH_ALGORITHMS", "logistic_regression,mlp"))
    parser.add_argument("--views", default=os.environ.get("BENCH_VIEWS", "1,8,8a"),
                        help="comma list of view settings per classifier; suffix 'a' = train-time augmentation")
    parser.add_argument("--feature-views", type=int, default=8,
                        help="views computed by tile_features (features already stored with as many or more are reused)")
    parser.add_argument("--sample-frac", type=float, default=1.0)
    parser.add_argument("--preset", default=os.environ.get("BENCH_PRESET", DEFAULT_PRESET),
                        help="the preset whose settings are measured first and timed as make run's default")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        print(f"{args.data} not found: bench-accuracy needs AID (../shared/datasets/aid) or --data <class>/<image>",
              file=sys.stderr)
        return 2

    from dagster import DagsterInstance, MultiPartitionKey

    from aerial_assets.defs.definitions import build_defs
    from aerial_assets.defs.run import Runner, parse_list
    from aerial_assets.storage.core import join
    from aerial_assets.training.classifiers import check_algorithm
    from aerial_assets.training.presets import get_preset

    started = time.monotonic()
    env = {**os.environ, "AERIAL_DATA_ROOT": args.root, "AERIAL_TRAINING_TILES": args.data}
    env.pop("AERIAL_LABEL_MAP", None)
    if os.environ.get("BENCH_LABEL_MAP"):  # e.g. examples/aid_nlcd.yaml: the comparison on grouped classes
        env["AERIAL_LABEL_MAP"] = os.environ["BENCH_LABEL_MAP"]
    defs = build_defs(env)
    storage = defs.resources["storage"]
    layout, store = storage.layout, storage.storage
    preset = get_preset(args.preset)
    backbones = list(dict.fromkeys([*preset.backbones, *[b.strip() for b in args.backbones.split(",") if b.strip()]]))
    algorithms = parse_list(args.algorithms, check_algorithm)
    settings = _settings(args.views)
    # the preset's own settings first (views 0 = every computed view), then the others
    plan = [(b, a, preset.classifier_settings(a).get("views", 0) or preset.feature_views,
             preset.classifier_settings(a).get("augmentation", "average"), True)
            for b in preset.backbones for a in preset.algorithms]
    for backbone in backbones:
        for algorithm in algorithms:
            for views, augmentation in settings:
                if augmentation == "augment" and algorithm not in ("logistic_regression", "linear_discriminant"):
                    continue  # augmenting multiplies training rows: measured on the linear models only
                if (backbone, algorithm, views, augmentation) not in [p[:4] for p in plan]:
                    plan.append((backbone, algorithm, views, augmentation, False))
    with DagsterInstance.ephemeral() as instance:
        catalog_cfg = {"test_fraction": 0.5, "validation_fraction": 0.1, "seed": 0, "sample_frac": args.sample_frac}
        runner = Runner(defs, instance, {"ops": {"labeled_tiles": {"config": catalog_cfg}}})
        catalog_started = time.monotonic()
        if not runner.run(["labeled_tiles"]):
            return 1
        catalog_seconds = time.monotonic() - catalog_started
        catalog_stamp = store.read_text(join(layout.labeled_tiles(), "summary.json"))
        feature_rows = []
        for backbone in backbones:
            folder = layout.tile_features(backbone)
            stamp_file = join(folder, "bench_catalog.json")
            summary_file = join(folder, "summary.json")
            reuse = (store.exists(stamp_file) and store.read_text(stamp_file) == catalog_stamp
                     and json.loads(store.read_text(summary_file)).get("views", 1) >= args.feature_views)
            if not reuse:
                runner.run_config = {"ops": {"tile_features": {"config": {"views": args.feature_views}}}}
                if not runner.run(["backbone_models", "tile_features"], backbone):
                    return 1
                store.write_text(stamp_file, catalog_stamp)
            summary = json.loads(store.read_text(summary_file))
            feature_rows.append({"backbone": backbone, "views": summary["views"], "tiles": summary["n_tiles"],
                                 "seconds": summary["seconds"],
                                 "tiles_per_s": round(summary["n_tiles"] / max(summary["seconds"], 1e-9), 1),
                                 "ms_per_tile_view": round(1000 * summary["seconds"] / max(
                                     summary["n_tiles"] * summary["views"], 1), 2),
                                 "reused": reuse, **({"reused_parts": summary["reused_parts"]}
                                                     if "reused_parts" in summary else {})})
        compare_started = time.monotonic()
        feature_cost = {r["backbone"]: (r["seconds"], r["views"]) for r in feature_rows}
        rows = []
        for backbone, algorithm, views, augmentation, in_preset in plan:
            key = MultiPartitionKey({"backbone": backbone, "algorithm": algorithm})
            cfg = {"views": views, "augmentation": augmentation}
            runner.run_config = {"ops": {"land_use_classifiers": {"config": cfg}}}
            run_started = time.monotonic()
            if not runner.run(["land_use_classifiers", "classifier_metrics"], key,
                              f"{backbone}|{algorithm}|{views}{augmentation[:3]}"):
                continue
            run_seconds = time.monotonic() - run_started
            m = json.loads(store.read_text(join(layout.classifier_metrics(backbone, algorithm), "metrics.json")))
            seconds, computed = feature_cost[backbone]
            feature_s = seconds * views / computed  # this setting's views' share of the features computed
            rows.append({"preset": preset.name if in_preset else "", "backbone": backbone, "algorithm": algorithm,
                         "views": views, "augmentation": augmentation,
                         "accuracy": round(m["test"]["accuracy"], 4), "macro_f1": round(m["test"]["macro_f1"], 4),
                         "ece": round(m["calibration"]["ece"], 4), "val_macro_f1": round(m["validation"]["macro_f1"], 4),
                         "fit_s": round(m["fit_seconds"], 1), "run_s": round(run_seconds, 1),
                         "feature_s": round(feature_s), "total_s": round(feature_s + run_seconds),
                         "params": json.dumps(m.get("params", {}))})
        compare_seconds = time.monotonic() - compare_started
        runner.run_config = {}
        runner.run(["model_leaderboard", "champion_model"])
    table = pd.DataFrame(rows).sort_values("accuracy", ascending=False, kind="mergesort")
    preset_rows = table[table["preset"] != ""]
    default_wall = catalog_seconds + sum(feature_cost[b][0] for b in preset.backbones) + preset_rows["run_s"].sum()
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 80)
    print("\nFeaturization (tile_features, local Spark):")
    print(pd.DataFrame(feature_rows).to_string(index=False))
    print(f"\nAID comparison ({args.data}, stratified 50/50 split, seed 0; validation carved from train):")
    print(table.to_string(index=False))
    champion = json.loads(store.read_text(join(layout.champion(), "champion.json")))
    print(f"\nchampion (validation macro-F1): {champion['backbone']} + {champion['algorithm']}, "
          f"{champion['views']} view(s): test accuracy {champion['test_accuracy']:.4f}")
    best = preset_rows.iloc[0] if len(preset_rows) else None
    if best is not None:
        print(f"default preset '{preset.name}' ({', '.join(preset.backbones)}; {', '.join(preset.algorithms)}): best "
              f"test accuracy {best['accuracy']:.4f}; wall time {default_wall / 60:.1f} min on this data (catalog "
              f"{catalog_seconds:.0f} s + features {sum(feature_cost[b][0] for b in preset.backbones):.0f} s + "
              f"classifiers {preset_rows['run_s'].sum():.0f} s; counties aside)")
    print(f"comparison wall time (features computed): {compare_seconds:.0f} s; "
          f"whole benchmark: {time.monotonic() - started:.0f} s")
    if runner.failures:
        print(f"failed: {runner.failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench-accuracy", main))
