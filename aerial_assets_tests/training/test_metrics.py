import numpy as np
import pytest

from aerial_assets.training.metrics import calibration, confusion_matrix, report


def test_recall_is_tp_over_row_and_precision_over_column():
    # true A: 8 right, 2 called B; true B: 5 right, 5 called A
    matrix = confusion_matrix([(0, 0, 8), (0, 1, 2), (1, 1, 5), (1, 0, 5)], 2)
    rep = report(matrix, ["A", "B"])
    assert rep.recall == pytest.approx([0.8, 0.5])  # TP / (TP + FN)
    assert rep.precision == pytest.approx([8 / 13, 5 / 7])  # TP / (TP + FP)
    assert rep.accuracy == pytest.approx(13 / 20)
    f1 = 2 * rep.precision * rep.recall / (rep.precision + rep.recall)
    assert rep.macro_f1 == pytest.approx(f1.mean())


def test_absent_class_scores_zero_and_is_left_out_of_macro():
    matrix = np.array([[3, 0, 0], [0, 2, 1], [0, 0, 0]])
    rep = report(matrix, ["A", "B", "C"])
    assert rep.precision[2] == 0.0 and rep.recall[2] == 0.0
    assert rep.macro_f1 == pytest.approx((1.0 + 0.8) / 2)
    assert "| C |" in rep.per_class_markdown()


def test_ece_weights_each_bin_gap_by_its_share_of_tiles():
    # 4 tiles at 0.95 confidence, 3 right (gap 0.20); 6 tiles at 0.55 confidence, 3 right (gap 0.05)
    conf = np.array([0.95] * 4 + [0.55] * 6)
    correct = np.array([1, 1, 1, 0] + [1, 1, 1, 0, 0, 0], dtype=bool)
    cal = calibration(conf, correct, n_bins=10)
    assert cal.ece == pytest.approx(0.4 * 0.20 + 0.6 * 0.05)
    assert cal.max_gap == pytest.approx(0.20)
    assert cal.n == 10 and sum(b.count for b in cal.bins) == 10
    filled = [b for b in cal.bins if b.count]
    assert [(b.lower, b.upper, b.count) for b in filled] == [pytest.approx((0.5, 0.6, 6)), pytest.approx((0.9, 1.0, 4))]


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 200_000)
    calibrated = rng.uniform(size=conf.size) < conf  # right with exactly the stated probability
    assert calibration(conf, calibrated).ece < 0.01
    overconfident = rng.uniform(size=conf.size) < conf - 0.25
    assert calibration(conf, overconfident).ece == pytest.approx(0.25, abs=0.01)


def test_ece_bins_are_closed_on_the_right_and_refuse_non_probabilities():
    cal = calibration(np.array([0.0, 0.5, 1.0]), np.array([False, True, True]), n_bins=2)
    assert [b.count for b in cal.bins] == [2, 1]  # 0.0 and 0.5 in (0, 0.5], 1.0 in (0.5, 1]
    with pytest.raises(ValueError, match="probabilities"):
        calibration(np.array([0.5, 1.2]), np.array([True, False]))
    with pytest.raises(ValueError, match="outcomes"):
        calibration(np.array([0.5]), np.array([True, False]))
