"""Every pyspark.ml algorithm's saved pipeline, read back as arrays, scores as Spark does (real local Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from aerial_assets.serving.spark_models import EXPORTABLE, ExportedClassifier, ExportError, export_pipeline
from aerial_assets.storage.core import LocalStorage
from aerial_assets.training.classifiers import ClassifierParams, build_pipeline, with_vectors


def _frame(spark, n: int = 240, d: int = 12, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(0, 2.0, (classes, d))
    x = (centres[labels] + rng.normal(0, 1.5, (n, d))).astype(np.float32)
    x[:, 3] = 7.0  # a constant feature: the scaler's std is 0 there
    rows = [(f"t{i:03d}", f"c{labels[i]}", [float(v) for v in x[i]]) for i in range(n)]
    return spark.createDataFrame(rows, "tile_id string, label string, features array<float>"), x


@pytest.mark.parametrize("algorithm", EXPORTABLE)
def test_exported_pipeline_scores_like_spark(spark, tmp_path, algorithm):
    from pyspark.ml.functions import vector_to_array

    df, x = _frame(spark)
    classes = ["c0", "c1", "c2"]
    params = ClassifierParams(rf_num_trees=7, rf_max_depth=4, mlp_hidden=5, mlp_max_iter=30, lr_max_iter=30)
    model = build_pipeline(algorithm, params, x.shape[1], len(classes)).fit(with_vectors(df, classes))
    path = tmp_path / "pipeline_model"
    model.write().overwrite().save(str(path))
    store = LocalStorage()
    exported = export_pipeline(str(path), lambda f: [e.relative_path for e in store.list_files(f)], store.read_bytes)
    exported = ExportedClassifier.from_npz(exported.to_npz())  # what the MLflow model carries
    scored = model.transform(with_vectors(df, classes)).orderBy("tile_id")
    spark_rows = scored.select(vector_to_array("probability").alias("p"), "prediction").collect()
    spark_probs = np.array([r["p"] for r in spark_rows])
    ours = exported.probabilities(x)
    assert ours.shape == (len(x), len(classes))
    np.testing.assert_allclose(ours, spark_probs, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(ours.argmax(axis=1), [int(r["prediction"]) for r in spark_rows])
    assert len(set(ours.argmax(axis=1))) > 1  # a model that learned something, not a constant


def test_a_stage_it_cannot_read_is_named(spark, tmp_path):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import PCA

    df, _ = _frame(spark, n=20)
    model = Pipeline(stages=[PCA(k=2, inputCol="features_vec", outputCol="pca")]).fit(with_vectors(df))
    model.write().overwrite().save(str(tmp_path / "p"))
    store = LocalStorage()
    with pytest.raises(ExportError, match="PCAModel.*cannot be exported"):
        export_pipeline(str(tmp_path / "p"), lambda f: [e.relative_path for e in store.list_files(f)], store.read_bytes)
