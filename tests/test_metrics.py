import numpy as np
import pytest

from rescom.metrics import longtail_metrics, per_class_accuracy, shot_groups


def test_shot_groups_use_the_standard_thresholds():
    groups = shot_groups([500, 101, 100, 20, 19, 5])
    assert groups["many"].tolist() == [True, True, False, False, False, False]
    assert groups["medium"].tolist() == [False, False, True, True, False, False]
    assert groups["few"].tolist() == [False, False, False, False, True, True]


def test_longtail_metrics_average_per_class_within_groups():
    counts = [200, 50, 5]
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 0, 2, 0])
    m = longtail_metrics(preds, labels, counts)
    assert m["acc"] == pytest.approx(100 * 5 / 8)
    assert m["many"] == pytest.approx(75.0)
    assert m["medium"] == pytest.approx(50.0)
    assert m["few"] == pytest.approx(50.0)
    assert m["per_class_acc"] == pytest.approx([75.0, 50.0, 50.0])


def test_empty_group_is_none_and_missing_class_is_nan():
    m = longtail_metrics(np.array([0, 1]), np.array([0, 1]), [50, 30, 40])
    assert m["many"] is None and m["few"] is None
    assert m["per_class_acc"][2] is None
    assert np.isnan(per_class_accuracy(np.array([0]), np.array([0]), 2)[1])
