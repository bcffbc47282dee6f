"""The out-of-distribution model: its distances are Mahalanobis distances under the compact shrunk covariance,
its threshold comes from held-out rows, and on Spark it flags shifted tiles and few tiles like the training ones."""

import numpy as np
import pandas as pd
import pytest

from aerial_assets.training.novelty import (
    MIN_HELDOUT,
    NoveltyModel,
    fit_with_threshold,
    novelty_from_totals,
    novelty_scorer,
    ood_on_test,
    top_eigen,
    unit_rows,
)


def _blobs(seed: int = 0, n: int = 600, d: int = 24, k: int = 3, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = np.random.default_rng(99).normal(0, 3, (k, d))
    mixing = np.random.default_rng(98).normal(0, 1, (d, d)) / np.sqrt(d)
    return centres[y] + rng.normal(0, 1, (n, d)) @ mixing + shift, y


def _totals(x, y, k):
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, y, x)

    def fourth(means):
        c = x - means[y]
        return float(((c * c).sum(1) ** 2).sum())

    return x.T @ x, sums, np.bincount(y, minlength=k), fourth


def _reference_distances(model: NoveltyModel, x: np.ndarray) -> np.ndarray:
    """Row by row, with the covariance the model stands for written out as a d x d matrix and inverted."""
    d = x.shape[1]
    projector = model.basis.T @ model.basis
    sigma = model.basis.T @ np.diag(model.variances) @ model.basis
    if model.rest > 0:
        sigma = sigma + model.rest * (np.eye(d) - projector)
    inverse = np.linalg.inv(sigma)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)  # the model scores unit vectors
    out = []
    for row in x:
        out.append(min(float((row - m) @ inverse @ (row - m)) for m in model.means))
    return np.sqrt(out)


@pytest.mark.parametrize("rank", [24, 6])
def test_distances_are_mahalanobis_distances_to_the_nearest_class_mean(rank):
    x, y = _blobs()
    model = novelty_from_totals(*_totals(unit_rows(x), y, 3), rank=rank)
    assert len(model.variances) == rank and (model.rest > 0) == (rank < 24)
    probe, _ = _blobs(seed=1, n=50, shift=0.5)
    np.testing.assert_allclose(model.distances(probe), _reference_distances(model, probe), rtol=1e-7)


def test_full_rank_model_uses_the_ledoit_wolf_shrunk_pooled_covariance():
    x, y = _blobs()
    x = unit_rows(x)
    model = novelty_from_totals(*_totals(x, y, 3), rank=24)
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    c = x - means[y]
    cov = c.T @ c / len(x)
    mu = np.trace(cov) / cov.shape[0]
    shrunk = (1 - model.shrinkage) * cov + model.shrinkage * mu * np.eye(cov.shape[0])
    rebuilt = model.basis.T @ np.diag(model.variances) @ model.basis
    assert 0 < model.shrinkage < 1
    np.testing.assert_allclose(rebuilt, shrunk, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.means, means, rtol=1e-10)


def test_randomized_top_eigen_matches_the_exact_decomposition_above_2048_dimensions():
    rng = np.random.default_rng(0)
    d = 2100
    factors = rng.normal(0, 1, (d, 40)) * np.linspace(10, 1, 40)
    matrix = factors @ factors.T + 0.01 * np.eye(d)
    values, vectors = top_eigen(matrix, 20)
    exact = np.linalg.eigvalsh(matrix)[::-1][:20]
    np.testing.assert_allclose(values, exact, rtol=1e-6)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(20), atol=1e-8)


def test_model_round_trips_through_its_file_bytes():
    x, y = _blobs()
    model = novelty_from_totals(*_totals(x, y, 3), rank=8).with_threshold(np.arange(100.0), "validation")
    back = NoveltyModel.from_bytes(model.to_bytes())
    assert (back.threshold, back.heldout, back.n_heldout, back.rest) == (model.threshold, "validation", 100, model.rest)
    np.testing.assert_array_equal(back.basis, model.basis)


def test_test_split_report_counts_flags_and_accuracy_on_each_side():
    frame = pd.DataFrame({"label": ["a", "a", "b", "b"], "pred_label": ["a", "b", "b", "a"],
                          "ood_score": [1.0, 5.0, 2.0, 6.0]})
    report = ood_on_test(frame, 3.0)
    assert (report.n_out, report.share_out, report.accuracy_in, report.accuracy_out) == (2, 0.5, 1.0, 0.0)


def _frame(spark, x, y, split, start=0):
    rows = [(f"t{start + i:05d}", [float(v) for v in row], float(label), split) for i, (row, label) in
            enumerate(zip(x, y, strict=True))]
    return spark.createDataFrame(rows, "tile_id string, features array<double>, label_idx double, split string")


def test_on_spark_the_threshold_is_the_validation_quantile_and_shifted_tiles_are_flagged(spark):
    x, y = _blobs(n=1500)
    train = _frame(spark, x[:1200], y[:1200], "train")
    validation = _frame(spark, x[1200:], y[1200:], "validation", 1200)
    model = fit_with_threshold(train, validation, 3, "label_idx")
    assert model.heldout == "validation" and model.n_heldout == 300 and model.n_fit == 1200
    expected = np.quantile(model.distances(x[1200:]), 0.99)  # the held-out rows, not the ones it was fitted on
    assert model.threshold == pytest.approx(expected, rel=1e-9)
    like, _ = _blobs(seed=5, n=2000)
    shifted, _ = _blobs(seed=6, n=500, shift=1.5)
    share_like = float((model.distances(like) > model.threshold).mean())
    share_shifted = float((model.distances(shifted) > model.threshold).mean())
    assert share_like < 0.04, share_like
    assert share_shifted > 0.9, share_shifted
    # the Spark UDF computes the same distances as the model on the driver
    probe = _frame(spark, shifted[:40], np.zeros(40), "test")
    scored = [r[0] for r in probe.select(novelty_scorer(model)("features")).collect()]
    np.testing.assert_allclose(scored, model.distances(shifted[:40]), rtol=1e-9)


def test_without_enough_validation_tiles_a_fifth_of_the_training_tiles_sets_the_threshold(spark):
    x, y = _blobs(n=400)
    train = _frame(spark, x, y, "train")
    validation = _frame(spark, x[:MIN_HELDOUT - 1], y[:MIN_HELDOUT - 1], "validation", 5000)
    model = fit_with_threshold(train, validation, 3, "label_idx")
    assert model.heldout == "train fifth"
    assert 0 < model.n_heldout < 400 and model.n_fit + model.n_heldout == 400
