"""The promotion gate's decision rule and the accuracy figures it records (numpy only, no model needed)."""

import numpy as np
import pytest

from export.gate import accuracy_figures, decide


def _figures(balanced_acc: float) -> dict:
    return {"served": {"balanced_acc": balanced_acc}}


def test_a_drop_beyond_the_tolerance_or_a_temperature_at_its_bound_stages():
    assert decide(_figures(93.5), _figures(94.0), 1, temperature=0.8).passed  # within 1 point
    worse = decide(_figures(92.5), _figures(94.0), 1, temperature=0.8)
    assert not worse.passed and worse.reasons == [
        "balanced_acc 92.50 % is below version 1's 94.00 % by more than 1 points"
    ]
    bound = decide(_figures(95.0), _figures(94.0), 1, temperature=20.0)
    assert not bound.passed and "T = 20 hit the bound" in bound.reasons[0]
    assert not decide(None, None, 1, temperature=1.0).passed  # cannot compare with the served version
    first = decide(
        _figures(11.6), None, None, temperature=20.0
    )  # nothing served: never leave the model empty
    assert first.passed and first.warnings and not first.reasons
    assert decide(_figures(90.0), _figures(94.0), 1, 0.8, tolerance=5.0).passed


def test_figures_raw_and_served_with_thresholds():
    # 3 classes; class 2 is rare (n = 5): Many n > 50, Few n < 20
    logits = np.array([[2.0, 0.0, 1.9], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.9]])
    labels = np.array([0, 1, 2, 2])
    bias = np.array([-0.2, 0.0, 0.2])  # moves rows 0 and 3 to class 2 once calibrated
    m = accuracy_figures(logits, labels, [100, 30, 5], 1.0, bias, {"many": 50, "few": 20})
    assert m["thresholds"] == {"many": 50, "few": 20} and m["num_images"] == 4
    assert m["raw"]["top1"] == pytest.approx(75.0) and m["raw"]["balanced_acc"] == pytest.approx(
        100 * (1 + 1 + 0.5) / 3
    )
    assert m["served"]["top1"] == pytest.approx(75.0)
    assert m["served"]["balanced_acc"] == pytest.approx(100 * (0 + 1 + 1) / 3)
    assert (m["served"]["many"], m["served"]["medium"], m["served"]["few"]) == (0.0, 100.0, 100.0)
