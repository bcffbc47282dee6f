"""The leaderboard of every backbone x algorithm and the choice of the champion. No Dagster import.

Ranking uses validation scores only: the test split stays a final report, never a selection criterion.
"""

import pandas as pd

from aerial_assets.records import MetricsRecord
from aerial_assets.storage.core import Storage
from aerial_assets.storage.layout import Layout
from aerial_assets.training.provenance import FeaturesIdentity, catalog_sha, provenance_problem

LEADERBOARD_COLUMNS = ["backbone", "algorithm", "accuracy", "macro_f1", "n_train", "n_test", "fit_seconds"]
EXTRA_COLUMNS = ["views", "augmentation", "val_accuracy", "val_macro_f1", "n_validation", "ece", "model_id",
                 "mlflow_run_id"]
PROVENANCE_COLUMNS = ["catalog_sha256", "features_sha256"]


def leaderboard_frame(store: Storage, layout: Layout, keys: list[tuple[str, str]]
                      ) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """One row per classifier_metrics partition that belongs to the current upstream; the partitions that have
    no metrics yet; and the ones left out, with the reason (:func:`provenance_problem`)."""
    rows, missing, left_out = [], [], {}
    catalog = catalog_sha(store, layout)
    features: dict[str, FeaturesIdentity | str] = {}
    for backbone, algorithm in keys:
        folder = layout.classifier_metrics(backbone, algorithm)
        if not MetricsRecord.exists(store, folder):
            missing.append(f"{backbone}|{algorithm}")
            continue
        if problem := provenance_problem(store, layout, backbone, algorithm, catalog, features):
            left_out[f"{backbone}|{algorithm}"] = problem
            continue
        m = MetricsRecord.read(store, folder)
        rows.append({
            "backbone": backbone, "algorithm": algorithm, "accuracy": m.test.accuracy,
            "macro_f1": m.test.macro_f1, "n_train": m.n_train, "n_test": sum(m.test.support),
            "fit_seconds": m.fit_seconds, "views": m.views, "augmentation": m.augmentation,
            "val_accuracy": m.validation.accuracy, "val_macro_f1": m.validation.macro_f1,
            "n_validation": sum(m.validation.support), "ece": m.calibration.get("ece"), "model_id": m.model_id,
            "mlflow_run_id": m.mlflow_run_id,
            **(m.upstream.model_dump() if m.upstream else {}),
        })
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS + EXTRA_COLUMNS + PROVENANCE_COLUMNS)
    return rank(frame).reset_index(drop=True), missing, left_out


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Best validation macro-F1 first, then validation accuracy; remaining ties by name, so that the same
    seed always gives the same order (fit time would make it depend on the machine's load)."""
    return frame.sort_values(["val_macro_f1", "val_accuracy", "backbone", "algorithm"],
                             ascending=[False, False, True, True], kind="mergesort")


def pick_champion(frame: pd.DataFrame) -> tuple[pd.Series, str]:
    """The top of :func:`rank`. Never looks at test scores."""
    ranked = rank(frame)
    best = ranked.iloc[0]
    why = f"highest validation macro-F1 ({best['val_macro_f1']:.4f}) of {len(ranked)} models"
    if len(ranked) > 1:
        runner = ranked.iloc[1]
        why += (f"; runner-up {runner['backbone']} + {runner['algorithm']} at {runner['val_macro_f1']:.4f}"
                f" (margin {best['val_macro_f1'] - runner['val_macro_f1']:+.4f})")
    return best, why
