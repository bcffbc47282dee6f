"""What an MLflow run holds, from the project's records; addresses without credentials (pure, no MLflow store)."""

from __future__ import annotations

import numpy as np
import pytest

from aerial_assets.records import ClassifierRecord, FeaturesIdentity, MetricsRecord, ReportRecord
from aerial_assets.serving.spark_models import ExportedClassifier, ExportError
from aerial_assets.tracking.classifier_runs import metric_name, run_metrics, run_params, run_tags
from aerial_assets.tracking.mlflow_store import Target, embedded_folder, public_address, run_url


def _report(accuracy: float) -> ReportRecord:
    return ReportRecord(classes=["Forest", "Open water"], confusion_matrix=[[3, 1], [0, 4]], accuracy=accuracy,
                        macro_f1=accuracy - 0.01, precision=[1.0, 0.8], recall=[0.75, 1.0], f1=[0.857, 0.889],
                        support=[4, 4])


def test_run_fields_come_from_the_records_unrounded():
    upstream = FeaturesIdentity(catalog_sha256="c" * 64, features_sha256="f" * 64)
    info = ClassifierRecord(model_id="m.lr.1", backbone="m", algorithm="logistic_regression",
                            classes=["Forest", "Open water"], params={"regParam": 0.01, "maxIter": 100},
                            search={"method": "train_validation_split", "metric": "macro_f1",
                                    "candidates": [{"regParam": 0.01, "macro_f1": 0.9}]},
                            n_train=10, views=4, fit_seconds=1.25, upstream=upstream)
    record = MetricsRecord(backbone="m", algorithm="logistic_regression", model_id="m.lr.1", n_train=10,
                           fit_seconds=1.25, test=_report(0.8751234567), validation=_report(0.9),
                           calibration={"ece": 0.0312345, "max_gap": 0.1}, upstream=upstream)
    metrics = run_metrics(record)
    assert metrics["test_accuracy"] == 0.8751234567 and metrics["val_accuracy"] == 0.9
    assert metrics["ece"] == 0.0312345 and metrics["fit_seconds"] == 1.25 and metrics["test_n"] == 8
    assert metrics["test_f1.Open water"] == 0.889  # a space is allowed in MLflow names
    params = run_params(info)
    assert params["hp.regParam"] == 0.01 and params["search"] == "train_validation_split" and params["views"] == 4
    assert params["search_candidates"] == [{"regParam": 0.01, "macro_f1": 0.9}]
    tags = run_tags(record, "run-1", "classifier_metrics", "m|logistic_regression")
    assert tags["aerial.features_sha256"] == "f" * 64 and tags["dagster.partition"] == "m|logistic_regression"


def test_names_and_addresses_are_safe_to_show():
    assert metric_name("Forest (deciduous)/mixed?") == "Forest _deciduous_/mixed_"
    assert public_address("https://user:s3cret@mlflow.example.org:8443/base?token=abc") == \
        "https://mlflow.example.org:8443/base"
    assert public_address("databricks") == "databricks"
    server = Target("http://u:p@10.0.0.1:5000", "e", "m")
    assert run_url(server, "3", "abc") == "http://10.0.0.1:5000/#/experiments/3/runs/abc"
    assert run_url(Target("sqlite:////x/mlflow.db", "e", "m"), "1", "r") == "http://127.0.0.1:5000/#/experiments/1/runs/r"
    assert embedded_folder("/data/root", ".aerial_data") == "/data/root/mlflow"
    assert embedded_folder("az://c/p", "/local/.aerial_data") == "/local/.aerial_data/mlflow"


def test_exported_classifier_round_trips_and_refuses_a_wrong_kind():
    rng = np.random.default_rng(0)
    model = ExportedClassifier("linear", 3, {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=3),
                                             "scaler_mean": rng.normal(size=4), "scaler_scale": np.ones(4)})
    x = rng.normal(size=(5, 4)).astype(np.float32)
    again = ExportedClassifier.from_npz(model.to_npz())
    np.testing.assert_array_equal(again.probabilities(x), model.probabilities(x))
    np.testing.assert_allclose(model.probabilities(x).sum(axis=1), 1.0)
    with pytest.raises(ExportError, match="unknown classifier kind"):
        ExportedClassifier("svm", 3).probabilities(x)
