"""Label-shift monitoring: KL(adaptive estimate || training prior) and prediction shares, in /metrics and the API."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from rescom.calibration import prior_from_counts
from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import CLASS_COUNTS, TEMPERATURE, tiny_reference_logits, write_version
from rescom_dev.prometheus import metric_value
from rescom_dev.servers import free_port, running_server
from service.config import Settings
from service.label_shift import kl_divergence, prediction_share

pytestmark = pytest.mark.timeout(120)


def test_kl_and_shares_by_their_formulas():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])
    assert kl_divergence(p, q) == pytest.approx(np.log(2.0))
    assert kl_divergence(q, q) == 0.0
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.5], [3.0, 0.0, 0.0]])
    np.testing.assert_allclose(prediction_share(logits, 1.0, None), [0.5, 0.25, 0.25])
    # the class bias b moves the calibrated top-1 (z / T + b) of the borderline third row
    np.testing.assert_allclose(prediction_share(logits, 1.0, np.array([0.0, 0.6, 0.0])), [0.5, 0.5, 0.0])
    assert prediction_share(np.zeros((0, 3)), 1.0, None).tolist() == [0.0, 0.0, 0.0]


def test_gauges_follow_the_traffic(tmp_path: Path):
    write_version(tmp_path, "tiny", 1)
    s = Settings(model_repository=tmp_path, port=free_port(), poll_interval_s=0, log_level="warning")
    images = random_images(24, seed=3)
    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as c:
        files = [("file", (f"{i}.png", encode(img), "image/png")) for i, img in enumerate(images)]
        c.post("/predict", files=files).raise_for_status()
        text = c.get("/metrics").text
        state = c.get("/v1/models/tiny/prior").json()
    pi_train = prior_from_counts(CLASS_COUNTS)
    assert state["kl_adaptive_train"] == pytest.approx(kl_divergence(np.asarray(state["adaptive"]), pi_train))
    assert metric_value(text, "rescom_label_shift_kl", model="tiny") == pytest.approx(
        state["kl_adaptive_train"], rel=1e-6
    )
    assert metric_value(text, "rescom_label_shift_window_images", model="tiny") == len(images)
    expected = prediction_share(tiny_reference_logits(images), TEMPERATURE, None)
    np.testing.assert_allclose(state["prediction_share"], expected, atol=1e-9)
    shares = [
        metric_value(text, "rescom_prediction_share", model="tiny", **{"class": str(k)}) for k in range(10)
    ]
    np.testing.assert_allclose(shares, expected, atol=1e-9)
