"""The shrinkage discriminant: its fit from Spark's totals equals the textbook computation on the rows."""

import numpy as np
import pytest

from aerial_assets.training.discriminant import ledoit_wolf, solve


def _blobs(seed: int = 0, n: int = 240, d: int = 12, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(0, 2, (k, d))
    mixing = rng.normal(0, 1, (d, d))  # correlated features, as pooled CNN features are
    return centres[y] + rng.normal(0, 1, (n, d)) @ mixing, y


def _reference(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Row by row: class means, centred rows, the Ledoit-Wolf formula as scikit-learn writes it on rows
    (``ledoit_wolf_shrinkage``), the shrunk covariance and the discriminant."""
    n, d = x.shape
    means = np.stack([x[y == c].mean(0) for c in range(k)])
    c = x - means[y]
    x2 = c ** 2
    emp_cov_trace = x2.sum(0) / n
    mu = emp_cov_trace.sum() / d
    beta_ = float((x2.T @ x2).sum())
    delta_ = float(((c.T @ c) ** 2).sum()) / n ** 2
    beta = 1.0 / (d * n) * (beta_ / n - delta_)
    delta = (delta_ - 2.0 * mu * emp_cov_trace.sum() + d * mu ** 2) / d
    shrink = min(beta, delta) / delta
    cov = (1 - shrink) * (c.T @ c / n) + shrink * mu * np.eye(d)
    w = np.linalg.solve(cov, means.T).T
    b = -0.5 * (means * w).sum(1) + np.log(np.bincount(y, minlength=k) / n)
    return w, b, shrink


def _totals(x, y, k):
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, y, x)
    return x.T @ x, sums, np.bincount(y, minlength=k)


def test_solve_from_totals_equals_the_row_by_row_reference():
    x, y = _blobs()
    w, b, shrink = _reference(x, y, 3)

    def fourth(means):
        c = x - means[y]
        return float(((c * c).sum(1) ** 2).sum())

    fit = solve(*_totals(x, y, 3), fourth, None)
    assert 0 < fit.shrinkage < 1
    assert fit.shrinkage == pytest.approx(shrink, rel=1e-9)
    np.testing.assert_allclose(fit.coefficients, w, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fit.intercepts, b, rtol=1e-7, atol=1e-9)


def test_fixed_shrinkage_skips_the_fourth_moment_and_an_absent_class_is_never_predicted():
    x, y = _blobs(k=3)
    gram, sums, counts = _totals(x, y, 4)  # class 3 has no row

    def never(_):
        raise AssertionError("the fourth moment is only needed to estimate the shrinkage")

    fit = solve(gram, sums, counts, never, 0.3)
    assert fit.shrinkage == 0.3
    scores = x @ fit.coefficients.T + fit.intercepts
    assert set(scores.argmax(1)) <= {0, 1, 2}
    assert (scores.argmax(1) == y).mean() > 0.9


def test_ledoit_wolf_shrinks_little_with_plenty_of_rows_and_much_with_few():
    rng = np.random.default_rng(1)
    scales = np.linspace(1, 10, 5)
    many = rng.normal(size=(20000, 5)) * scales  # far from a multiple of the identity, well estimated
    few = rng.normal(size=(6, 40))
    for rows, low, high in ((many, 0.0, 0.05), (few, 0.5, 1.0)):
        fourth = float(((rows * rows).sum(1) ** 2).sum())
        assert low <= ledoit_wolf(rows.T @ rows, fourth, len(rows)) <= high


@pytest.mark.slow
def test_spark_fit_matches_the_reference_and_survives_a_pipeline_save(spark, tmp_path):
    """On a real local Spark, through several partitions and the executors' reduction: the same model as the
    row-by-row reference, probabilities that sum to one, and a PipelineModel that saves and loads it."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.linalg import Vectors

    from aerial_assets.training.discriminant import ShrinkageLDA

    x, y = _blobs(seed=3, n=400, d=70)  # 70 features: the Gram matrix spans two reduction blocks
    w, b, shrink = _reference(x, y, 3)
    df = spark.createDataFrame([(Vectors.dense(row), float(label)) for row, label in zip(x, y, strict=True)],
                               ["f", "label"]).repartition(3)
    model = Pipeline(stages=[ShrinkageLDA(featuresCol="f", numClasses=3)]).fit(df)
    stage = model.stages[-1]
    assert stage.getOrDefault(stage.fittedShrinkage) == pytest.approx(shrink, rel=1e-9)
    np.testing.assert_allclose(np.array(stage.getOrDefault(stage.coefficients)), w, rtol=1e-6, atol=1e-9)
    path = str(tmp_path / "pipeline")
    model.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    out = loaded.transform(df).select("f", "probability", "prediction").toPandas()
    scores = np.stack([v.toArray() for v in out["f"]]) @ w.T + b
    assert np.array_equal(out["prediction"].to_numpy(), scores.argmax(1).astype(float))
    probs = np.stack([v.toArray() for v in out["probability"]])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)
    assert (out["prediction"].to_numpy() == probs.argmax(1)).all()
