"""The champion as an MLflow pyfunc: ``mlflow.pyfunc.load_model("models:/<name>@champion").predict(frame)`` with a
column ``image`` of encoded image bytes returns ``label``, ``prob_<class>`` and ``error`` per row.

The model's folder carries everything it runs: the backbone's ONNX graph, the classifier as arrays
(``classifier.npz``, :mod:`aerial_assets.serving.spark_models`), ``meta.json`` (classes, views), and the few modules
of this package the predictor imports (:data:`CODE_FILES`, as MLflow ``code_paths``), so a serving host needs only
the pip requirements recorded with it: no Spark, no Dagster, no install of this project. The model is saved "from
code" (:mod:`aerial_assets.serving.pyfunc_entry`), so loading it unpickles nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib.metadata import version
from types import SimpleNamespace

import mlflow.pyfunc
import pandas as pd

#: The modules the predictor imports, relative to the package; nothing else of the package travels with the model.
CODE_FILES = ("__init__.py", "tables.py", "imagery/__init__.py", "imagery/decode.py", "backbones/__init__.py",
              "backbones/inference.py", "serving/__init__.py", "serving/spark_models.py", "serving/predictor.py",
              "serving/pyfunc.py", "serving/pyfunc_entry.py")
#: What a serving host installs (the versions this process runs).
REQUIREMENTS = ("mlflow-skinny", "numpy", "pandas", "pillow", "tifffile", "onnxruntime")
ARTIFACTS = {"backbone": "model.onnx", "classifier": "classifier.npz", "meta": "meta.json"}


class LandUseModel(mlflow.pyfunc.PythonModel):
    """Loads the artifacts into a :class:`~aerial_assets.serving.predictor.TilePredictor` once, then predicts."""

    def load_context(self, context) -> None:
        from aerial_assets.serving.predictor import TilePredictor
        from aerial_assets.serving.spark_models import ExportedClassifier

        with open(context.artifacts["meta"], encoding="utf-8") as handle:
            meta = json.load(handle)
        with open(context.artifacts["backbone"], "rb") as handle:
            graph = handle.read()
        with open(context.artifacts["classifier"], "rb") as handle:
            classifier = ExportedClassifier.from_npz(handle.read())
        self.predictor = TilePredictor(graph, classifier, meta["classes"], int(meta["views"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "image" not in model_input:
            raise ValueError(f"expected a column 'image' of encoded image bytes; got columns {list(model_input)}")
        return self.predictor.predict(list(model_input["image"]))


def code_folder(target: str) -> str:
    """Copy :data:`CODE_FILES` into ``target/aerial_assets``; returns that folder (MLflow's ``code_paths`` entry)."""
    import aerial_assets

    package = os.path.dirname(os.path.abspath(aerial_assets.__file__))
    out = os.path.join(target, "aerial_assets")
    for relative in CODE_FILES:
        os.makedirs(os.path.dirname(os.path.join(out, relative)), exist_ok=True)
        shutil.copyfile(os.path.join(package, relative), os.path.join(out, relative))
    return out


def pip_requirements() -> list[str]:
    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def save(path: str, onnx_bytes: bytes, classifier_npz: bytes, classes: list[str], views: int,
         example_images: list[bytes], meta: dict | None = None) -> None:
    """Write the MLflow model folder at ``path`` (it must not exist): artifacts, code, requirements, and a signature
    and input example computed by running the model on ``example_images``."""
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp:
        files = {"backbone": onnx_bytes, "classifier": classifier_npz,
                 "meta": json.dumps({**(meta or {}), "classes": classes, "views": views}, indent=2).encode()}
        artifacts = {}
        for key, data in files.items():
            artifacts[key] = os.path.join(tmp, ARTIFACTS[key])
            with open(artifacts[key], "wb") as handle:
                handle.write(data)
        example = pd.DataFrame({"image": example_images})
        model = LandUseModel()
        model.load_context(SimpleNamespace(artifacts=artifacts))
        signature = infer_signature(example, model.predict(None, example))
        code = code_folder(os.path.join(tmp, "code"))
        mlflow.pyfunc.save_model(path, python_model=os.path.join(code, "serving", "pyfunc_entry.py"),
                                 artifacts=artifacts, code_paths=[code], pip_requirements=pip_requirements(),
                                 signature=signature, input_example=example.head(1))
