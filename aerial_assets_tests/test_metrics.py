import numpy as np
import pytest

from aerial_assets.metrics import confusion_matrix, report


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
