"""What an MLflow run of a classifier holds: params, metrics and tags from the project's records. No Dagster import.

The metrics are the very numbers of ``metrics.json`` (and so of ``leaderboard.csv``), unrounded, under the names the
leaderboard uses with a split prefix: ``test_accuracy`` is the leaderboard's ``accuracy``, ``val_macro_f1`` its
``val_macro_f1``. Per-class F1 (``test_f1.<class>``) lets MLflow's charts compare classes across models.
"""

from __future__ import annotations

import re

from aerial_assets.records import ClassifierRecord, MetricsRecord, ReportRecord

#: MLflow's allowed characters in metric and param names; anything else in a class name becomes ``_``.
_NAME = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_name(text: str) -> str:
    return _NAME.sub("_", text)


def run_params(info: ClassifierRecord) -> dict[str, object]:
    """The classifier's identity, its chosen hyperparameters and the search that chose them."""
    search = info.search or {}
    return {
        "backbone": info.backbone, "algorithm": info.algorithm, "views": info.views,
        "augmentation": info.augmentation, "n_train": info.n_train, "n_classes": len(info.classes),
        "classes": info.classes, "search": search.get("method", "none"),
        "search_metric": search.get("metric", ""),
        "search_candidates": search.get("candidates", []),  # every candidate with its search score
        **{f"hp.{name}": value for name, value in sorted(info.params.items())},
    }


def _split_metrics(prefix: str, report: ReportRecord) -> dict[str, float]:
    out = {f"{prefix}accuracy": report.accuracy, f"{prefix}macro_f1": report.macro_f1,
           f"{prefix}n": float(sum(report.support))}
    out.update({f"{prefix}f1.{metric_name(c)}": f for c, f in zip(report.classes, report.f1, strict=True)})
    return out


def run_metrics(record: MetricsRecord) -> dict[str, float]:
    """Test and validation figures, calibration and fit time, from the stored metrics record."""
    metrics = {**_split_metrics("test_", record.test), **_split_metrics("val_", record.validation),
               "fit_seconds": record.fit_seconds}
    for key in ("ece", "max_gap"):
        if record.calibration.get(key) is not None:
            metrics[key] = float(record.calibration[key])
    if record.ood is not None:
        metrics["test_ood_share"] = record.ood.share_out
        metrics.update({f"test_accuracy_{side}_distribution": value for side, value in
                        (("in", record.ood.accuracy_in), ("out_of", record.ood.accuracy_out)) if value is not None})
    return metrics


def run_tags(record: MetricsRecord, dagster_run_id: str, asset: str, partition: str) -> dict[str, str]:
    """What ties the run to Dagster and to the data: run, asset, partition, model and the upstream fingerprints."""
    tags = {"dagster.run_id": dagster_run_id, "dagster.asset": asset, "dagster.partition": partition,
            "aerial.model_id": record.model_id, "aerial.backbone": record.backbone,
            "aerial.algorithm": record.algorithm}
    if record.upstream is not None:
        tags.update({f"aerial.{k}": v for k, v in record.upstream.model_dump().items()})
    return tags
