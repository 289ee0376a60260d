import numpy as np
import pytest

from training.metrics import score


def test_wa_and_ua_differ_on_imbalanced_classes():
    # 8 of class 0 all right, 2 of class 1 both wrong: WA = 8/10, UA = (1 + 0) / 2.
    y_true = [0] * 8 + [1] * 2
    y_pred = [0] * 8 + [0] * 2
    s = score(y_true, y_pred, ["a", "b"])
    assert s.wa == pytest.approx(0.8)
    assert s.ua == pytest.approx(0.5)
    np.testing.assert_array_equal(s.confusion, [[8, 0], [2, 0]])


def test_ua_skips_classes_absent_from_truth():
    s = score([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert s.ua == pytest.approx((0.5 + 1.0) / 2)
    assert "true" in s.table() and "c" in s.table()


def test_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        score([0, 1], [0], ["a", "b"])
