"""Read a saved pyspark.ml ``PipelineModel`` into numpy arrays that score exactly as Spark does.

Why by hand: no maintained library converts Spark ML pipelines to something that runs without a JVM (ONNXMLTools'
Spark converter needs a live session and covers neither the MLP's Spark layout nor this project's discriminant), and
the saved format is small and documented by Spark's own readers: every stage is ``metadata/`` (one JSON line: class
and params) plus, for fitted models, ``data/`` (Parquet). Vectors are stored as ``struct<type, size, indices,
values>`` (type 0 sparse, 1 dense) and matrices as ``struct<type, numRows, numCols, colPtrs, rowIndices, values,
isTransposed>`` (type 0 CSC/CSR, 1 dense column-major unless transposed); both are the same on the 3.5 and 4.x lines.

The arithmetic follows Spark's: the scaler multiplies ``x - mean`` by ``1/std`` (0 where std is 0); logistic
regression, the MLP (sigmoid hidden layers, softmax output) and the discriminant take a softmax of their raw
scores; a random forest averages each tree's leaf class frequencies. No Dagster, no Spark import.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

#: Algorithms whose saved pipelines this module reads (SynapseML's lightgbm keeps a native LightGBM model instead).
EXPORTABLE = ("logistic_regression", "random_forest", "mlp", "linear_discriminant")


class ExportError(ValueError):
    """A saved pipeline this module cannot turn into arrays; the message says which stage and why."""


@dataclass
class ExportedClassifier:
    """A fitted pipeline as arrays: an optional standardisation, then one of three model kinds.

    ``kind`` ``linear`` (``w``, ``b``: logistic regression and the discriminant), ``mlp`` (``w0``, ``b0``, ``w1``,
    ...), or ``forest`` (every tree's nodes flattened: ``feature``, ``threshold``, ``left``, ``right``, ``value``
    (class frequencies of leaves) and ``roots``)."""

    kind: str
    n_classes: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``[N, D]`` features (any float dtype) -> ``[N, classes]`` probabilities, in float64 like Spark."""
        x = np.asarray(features, dtype=np.float64)
        if "scaler_mean" in self.arrays:
            x = (x - self.arrays["scaler_mean"]) * self.arrays["scaler_scale"]
        if self.kind == "linear":
            return _softmax(x @ self.arrays["w"].T + self.arrays["b"])
        if self.kind == "mlp":
            layers = sum(1 for k in self.arrays if k.startswith("w"))
            for i in range(layers):
                x = x @ self.arrays[f"w{i}"] + self.arrays[f"b{i}"]
                if i < layers - 1:
                    x = 1.0 / (1.0 + np.exp(-x))
            return _softmax(x)
        if self.kind == "forest":
            return _forest(self.arrays, x, self.n_classes)
        raise ExportError(f"unknown classifier kind {self.kind!r}")

    def to_npz(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, kind=np.array(self.kind), n_classes=np.array(self.n_classes), **self.arrays)
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> ExportedClassifier:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k not in ("kind", "n_classes")}
            return cls(str(npz["kind"]), int(npz["n_classes"]), arrays)


def _softmax(raw: np.ndarray) -> np.ndarray:
    shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _forest(a: dict[str, np.ndarray], x: np.ndarray, n_classes: int) -> np.ndarray:
    votes = np.zeros((len(x), n_classes))
    rows = np.arange(len(x))
    for root in a["roots"]:
        node = np.full(len(x), root, dtype=np.int64)
        while True:
            inner = a["left"][node] >= 0
            if not inner.any():
                break
            at = node[inner]
            go_left = x[rows[inner], a["feature"][at]] <= a["threshold"][at]
            node[inner] = np.where(go_left, a["left"][at], a["right"][at])
        counts = a["value"][node]
        total = counts.sum(axis=1, keepdims=True)
        votes += np.divide(counts, total, out=np.zeros_like(counts), where=total != 0)
    total = votes.sum(axis=1, keepdims=True)
    return np.divide(votes, total, out=np.full_like(votes, 1.0 / n_classes), where=total != 0)


# --- reading the saved pipeline ----------------------------------------------------------------------------

ListFiles = Callable[[str], Iterable[str]]  # folder -> relative paths of the files below it
ReadBytes = Callable[[str], bytes]


def _vector(value: dict) -> np.ndarray:
    if value["type"] == 1:
        return np.asarray(value["values"], dtype=np.float64)
    out = np.zeros(int(value["size"]))
    out[np.asarray(value["indices"], dtype=np.int64)] = value["values"]
    return out


def _matrix(value: dict) -> np.ndarray:
    rows, cols, values = int(value["numRows"]), int(value["numCols"]), np.asarray(value["values"], np.float64)
    transposed = bool(value["isTransposed"])
    if value["type"] == 1:  # dense: column-major, or row-major when transposed
        return values.reshape((rows, cols)) if transposed else values.reshape((cols, rows)).T
    out = np.zeros((rows, cols))
    pointers, indices = value["colPtrs"], value["rowIndices"]
    for outer in range(len(pointers) - 1):  # CSC (CSR when transposed)
        for k in range(pointers[outer], pointers[outer + 1]):
            if transposed:
                out[outer, indices[k]] = values[k]
            else:
                out[indices[k], outer] = values[k]
    return out


def _stage_data(files: list[str], stage: str, read: ReadBytes, folder: str) -> list[dict]:
    import pyarrow.parquet as pq

    parts = sorted(f for f in files if f.startswith(f"stages/{stage}/data/") and f.endswith(".parquet"))
    rows: list[dict] = []
    for part in parts:
        rows += pq.read_table(io.BytesIO(read(f"{folder}/{part}"))).to_pylist()
    return rows


def _metadata(files: list[str], prefix: str, read: ReadBytes, folder: str) -> dict:
    parts = sorted(f for f in files if f.startswith(f"{prefix}metadata/part-"))
    if not parts:
        raise ExportError(f"no {prefix}metadata/part-* in the saved pipeline at {folder}")
    return json.loads(read(f"{folder}/{parts[0]}").decode("utf-8").splitlines()[0])


def export_pipeline(folder: str, list_files: ListFiles, read: ReadBytes) -> ExportedClassifier:
    """The saved ``PipelineModel`` at ``folder`` (read through ``list_files``/``read``: any storage) as arrays."""
    files = [f for f in list_files(folder) if "/." not in f"/{f}"]
    pipeline = _metadata(files, "", read, folder)
    stages = pipeline["paramMap"]["stageUids"]
    names = sorted({f.split("/")[1] for f in files if f.startswith("stages/")},
                   key=lambda name: int(name.split("_", 1)[0]))
    if len(names) != len(stages):
        raise ExportError(f"the saved pipeline at {folder} lists {len(stages)} stages but holds {len(names)}")
    scaler: dict[str, np.ndarray] = {}
    model: ExportedClassifier | None = None
    for name in names:
        meta = _metadata(files, f"stages/{name}/", read, folder)
        cls, params = meta["class"].rsplit(".", 1)[-1], meta["paramMap"]
        if cls == "StandardScalerModel":
            (row,) = _stage_data(files, name, read, folder)
            std = _vector(row["std"])
            with np.errstate(divide="ignore"):
                scale = np.where(std == 0.0, 0.0, 1.0 / std) if params.get("withStd", True) else np.ones_like(std)
            mean = _vector(row["mean"]) if params.get("withMean", False) else np.zeros_like(std)
            scaler = {"scaler_mean": mean, "scaler_scale": scale}
        elif cls == "LogisticRegressionModel":
            (row,) = _stage_data(files, name, read, folder)
            if not row["isMultinomial"]:
                raise ExportError("a binomial logistic regression stage: this project trains multinomial ones")
            model = ExportedClassifier("linear", int(row["numClasses"]),
                                       {"w": _matrix(row["coefficientMatrix"]), "b": _vector(row["interceptVector"])})
        elif cls == "MultilayerPerceptronClassificationModel":
            (row,) = _stage_data(files, name, read, folder)
            model = _mlp(_vector(row["weights"]), [int(n) for n in params["layers"]])
        elif cls == "ShrinkageLDAModel":
            w = np.asarray(params["coefficients"], dtype=np.float64)
            model = ExportedClassifier("linear", len(w), {"w": w, "b": np.asarray(params["intercepts"], np.float64)})
        elif cls == "RandomForestClassificationModel":
            model = _random_forest(_stage_data(files, name, read, folder), int(meta.get("numClasses", 0)))
        else:
            raise ExportError(f"stage {name} ({meta['class']}) cannot be exported: supported are the "
                              f"algorithms {', '.join(EXPORTABLE)}")
    if model is None:
        raise ExportError(f"the saved pipeline at {folder} has no classifier stage")
    model.arrays.update(scaler)
    return model


def _mlp(weights: np.ndarray, layers: list[int]) -> ExportedClassifier:
    """Spark's layout: per layer, the ``out x in`` matrix column-major, then the ``out`` biases."""
    arrays, offset = {}, 0
    for i, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
        arrays[f"w{i}"] = weights[offset:offset + n_in * n_out].reshape((n_in, n_out))  # = (out x in col-major).T
        offset += n_in * n_out
        arrays[f"b{i}"] = weights[offset:offset + n_out]
        offset += n_out
    if offset != len(weights):
        raise ExportError(f"MLP weights hold {len(weights)} values; layers {layers} need {offset}")
    return ExportedClassifier("mlp", layers[-1], arrays)


def _random_forest(rows: list[dict], n_classes: int) -> ExportedClassifier:
    """Trees as flat node arrays; a leaf has ``left`` -1 and its class frequencies in ``value``."""
    trees: dict[int, list[dict]] = {}
    for row in rows:
        trees.setdefault(int(row["treeID"]), []).append(row["nodeData"])
    n_classes = n_classes or max(len(n["impurityStats"]) for nodes in trees.values() for n in nodes)
    feature, threshold, left, right, value, roots = [], [], [], [], [], []
    for tree_id in sorted(trees):
        nodes = sorted(trees[tree_id], key=lambda n: n["id"])
        base = len(feature)
        if [n["id"] for n in nodes] != list(range(len(nodes))):
            raise ExportError(f"tree {tree_id} of the random forest does not number its nodes 0..n-1")
        roots.append(base)
        for n in nodes:
            split = n["split"]
            if n["leftChild"] >= 0 and split["numCategories"] != -1:
                raise ExportError("a categorical split in the random forest: features here are continuous")
            feature.append(split["featureIndex"] if n["leftChild"] >= 0 else 0)
            threshold.append(split["leftCategoriesOrThreshold"][0] if n["leftChild"] >= 0 else 0.0)
            left.append(base + n["leftChild"] if n["leftChild"] >= 0 else -1)
            right.append(base + n["rightChild"] if n["rightChild"] >= 0 else -1)
            stats = np.zeros(n_classes)
            stats[:len(n["impurityStats"])] = n["impurityStats"]
            value.append(stats)
    return ExportedClassifier("forest", n_classes, {
        "feature": np.asarray(feature, np.int64), "threshold": np.asarray(threshold, np.float64),
        "left": np.asarray(left, np.int64), "right": np.asarray(right, np.int64),
        "value": np.asarray(value, np.float64), "roots": np.asarray(roots, np.int64)})
