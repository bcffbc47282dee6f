"""The champion as a registered MLflow model: its bundle's ONNX graph and pipeline turned into a pyfunc
(:mod:`aerial_assets.serving.pyfunc`), logged in a run and registered with the alias ``champion``. No Dagster import.
"""

from __future__ import annotations

import os
import tempfile

from aerial_assets.records import ChampionRecord
from aerial_assets.serving.spark_models import export_pipeline
from aerial_assets.storage.core import Storage
from aerial_assets.tracking.mlflow_store import RegisteredVersion, Target, register_model


def register_champion(target: Target, store: Storage, onnx_uri: str, pipeline_uri: str, record: ChampionRecord,
                      examples: list[bytes], tags: dict[str, str]) -> RegisteredVersion:
    """Export the champion's pipeline, save the pyfunc (its signature and input example from ``examples``: encoded
    tiles the model was tested on) and register it as a new version of ``target.model_name``."""
    from aerial_assets.serving import pyfunc  # imports MLflow's pyfunc machinery: only when registering

    classifier = export_pipeline(pipeline_uri, lambda folder: [e.relative_path for e in store.list_files(folder)],
                                 store.read_bytes)
    meta = {"model_id": record.model_id, "backbone": record.backbone, "algorithm": record.algorithm,
            "input": "a column 'image' of encoded image bytes (PNG, JPEG, TIFF)",
            "output": "label, prob_<class> of every class, error (why a row has no label)"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model")
        pyfunc.save(path, store.read_bytes(onnx_uri), classifier.to_npz(), record.classes, record.views, examples,
                    meta)
        params = {"backbone": record.backbone, "algorithm": record.algorithm, "views": record.views,
                  "augmentation": record.augmentation, "classes": record.classes, "why": record.why,
                  **{f"hp.{k}": v for k, v in sorted(record.params.items())}}
        metrics = {"val_macro_f1": record.val_macro_f1, "val_accuracy": record.val_accuracy,
                   "test_accuracy": record.test_accuracy, "test_macro_f1": record.test_macro_f1,
                   **({} if record.test_ece is None else {"ece": record.test_ece})}
        return register_model(target, path, run_name=f"champion {record.model_id}", params=params, metrics=metrics,
                              tags={**tags, "aerial.model_id": record.model_id})
