"""Image bytes to land use, the way the graph scores a tile: decode and resize (``imagery.decode.load_tile``), the
backbone's ONNX graph on every view (``backbones.inference``), the views' mean, then the exported classifier.

The same functions as ``tile_features`` and ``county_predictions`` use, so the served model and the graph agree on a
tile to within float rounding. No Dagster, no Spark import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from aerial_assets.backbones.inference import input_size, make_session, run_view_features
from aerial_assets.imagery.decode import ImageDecodeError, load_tile
from aerial_assets.serving.spark_models import ExportedClassifier

#: Columns of a prediction besides ``prob_<class>``: the label, and why a row has none (empty when it has one).
LABEL, ERROR = "label", "error"


class TilePredictor:
    """One onnxruntime session and one classifier; :meth:`predict` takes encoded images (PNG, JPEG, TIFF)."""

    def __init__(self, onnx_bytes: bytes, classifier: ExportedClassifier, classes: Sequence[str], views: int,
                 threads: int = 1, batch_size: int = 32) -> None:
        if classifier.n_classes != len(classes):
            raise ValueError(f"the classifier scores {classifier.n_classes} classes; {len(classes)} are named")
        self.session = make_session(onnx_bytes, threads)
        self.classifier, self.classes, self.views, self.batch_size = classifier, list(classes), views, batch_size
        self.size = input_size(self.session)

    def features(self, images: np.ndarray) -> np.ndarray:
        """``[N, S, S, 3]`` uint8 -> ``[N, D]`` float32: the mean over the views, as ``tile_features`` stores it."""
        return run_view_features(self.session, images, self.views).astype(np.float32).mean(axis=0)

    def predict(self, images: Sequence[bytes]) -> pd.DataFrame:
        """One row per image: ``label``, ``prob_<class>`` of every class, and ``error``: a row that does not decode
        keeps its place with no label, NaN probabilities and the reason (one bad image never fails the others)."""
        probs = np.full((len(images), len(self.classes)), np.nan)
        errors = [""] * len(images)
        for start in range(0, len(images), self.batch_size):
            pixels, rows = [], []
            for i in range(start, min(start + self.batch_size, len(images))):
                try:
                    pixels.append(load_tile(bytes(images[i]), self.size))
                    rows.append(i)
                except ImageDecodeError as exc:
                    errors[i] = str(exc)
            if rows:
                probs[rows] = self.classifier.probabilities(self.features(np.stack(pixels)))
        decoded = ~np.isnan(probs).any(axis=1)
        labels = [self.classes[k] if ok else None for k, ok in zip(probs.argmax(axis=1) if len(probs) else [],
                                                                  decoded, strict=True)]
        out = pd.DataFrame({LABEL: pd.Series(labels, dtype=object)})
        for k, name in enumerate(self.classes):
            out[f"prob_{name}"] = probs[:, k]
        out[ERROR] = errors
        return out
