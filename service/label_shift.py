"""Label-shift monitoring: how far the deployment's class prior has moved from the training prior.

Two signals per model, both from the adaptive prior's window of recent images (:class:`service.priors.AdaptivePrior`):

- ``KL(π_t || π_train) = Σ_c π_t[c] log(π_t[c] / π_train[c])`` (nats), with ``π_t`` the EM estimate of the
  deployment prior (Saerens et al. 2002) and ``π_train`` the training counts ``n_c / N``. 0 when the traffic
  has the training distribution; it grows as classes become more or less frequent than in training.
- the per-class share of recent predictions: the fraction of the window whose calibrated top-1 under a
  uniform prior (``argmax z / T + b``, the service's default answer) is class ``c``.

They are published as Prometheus gauges (:mod:`service.metrics`), refreshed at each scrape, and returned by
``GET /v1/models/{name}/prior``; docs/model-lifecycle.md has an example alert rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rescom.calibration import calibrate_logits
from service.priors import AdaptivePrior

__all__ = ["LabelShift", "kl_divergence", "label_shift", "prediction_share"]


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """``KL(p || q)`` in nats for two distributions ``[C]`` (terms with ``p[c] = 0`` are 0)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], 1e-300)))))


def prediction_share(logits: np.ndarray, temperature: float, class_bias: np.ndarray | None) -> np.ndarray:
    """Share of rows ``[n, C]`` whose calibrated uniform-prior top-1 is each class, ``[C]`` (zeros if ``n = 0``)."""
    num_classes = logits.shape[1]
    if logits.shape[0] == 0:
        return np.zeros(num_classes)
    top1 = calibrate_logits(logits, temperature, class_bias).argmax(axis=1)  # [n]
    return np.bincount(top1, minlength=num_classes) / logits.shape[0]


@dataclass(frozen=True)
class LabelShift:
    """The monitoring figures of one model.

    Attributes:
        kl: ``KL(π_t || π_train)`` in nats.
        prediction_share: ``[C]`` share of the window predicted as each class.
        window_images: images in the window (the figures mean little while it is small).
    """

    kl: float
    prediction_share: np.ndarray
    window_images: int


async def label_shift(adaptive: AdaptivePrior, train_prior: np.ndarray) -> LabelShift:
    """Re-estimate ``π_t`` if new images arrived (bounded by ``update_every``) and compute the figures."""
    estimate = await adaptive.estimate()
    window = adaptive.window_logits()  # [n, C]
    share = prediction_share(window, adaptive.temperature, adaptive.class_bias)
    return LabelShift(kl_divergence(estimate, train_prior), share, int(window.shape[0]))
