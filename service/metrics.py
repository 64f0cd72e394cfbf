"""Prometheus metrics (histograms, so p99 can be aggregated across replicas), one registry per app.

| metric | type | labels |
| --- | --- | --- |
| ``rescom_requests_total`` | counter | ``route``, ``method``, ``status`` |
| ``rescom_request_duration_seconds`` | histogram | ``route``, ``method`` |
| ``rescom_images_total`` | counter | ``model`` (images run through the model) |
| ``rescom_batch_size`` | histogram | ``model`` (rows per model call, before padding) |
| ``rescom_batch_duration_seconds`` | histogram | ``model`` (model call) |
| ``rescom_queue_duration_seconds`` | histogram | ``model`` (time a request waited to be batched) |
| ``rescom_queue_depth`` | gauge | ``model`` (images waiting) |
| ``rescom_rejected_total`` | counter | ``model``, ``reason`` (``queue_full`` / ``timeout``) |
| ``rescom_model_info`` | gauge (1) | ``model``, ``version``, ``provider`` |
| ``rescom_model_load_failures_total`` | counter | ``model`` |
| ``rescom_ready`` | gauge | |
| ``rescom_label_shift_kl`` | gauge | ``model`` (KL(adaptive π_t ‖ training π) in nats, :mod:`service.label_shift`) |
| ``rescom_prediction_share`` | gauge | ``model``, ``class`` (share of recent predictions per class) |
| ``rescom_label_shift_window_images`` | gauge | ``model`` (images behind the two figures above) |

The label-shift gauges are refreshed at each scrape of ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServiceMetrics", "ModelObserver", "CONTENT_TYPE_LATEST"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    """The service's metric families in their own :class:`CollectorRegistry` (several apps per process are fine)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("rescom_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "rescom_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("rescom_images", "images run through the model", ["model"], registry=r)
        self.batch_size = Histogram(
            "rescom_batch_size",
            "rows per model call (before padding)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "rescom_batch_duration_seconds",
            "model call duration",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "rescom_queue_duration_seconds",
            "time a request waited to be batched",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("rescom_queue_depth", "images waiting to be batched", ["model"], registry=r)
        self.rejected = Counter(
            "rescom_rejected", "requests rejected by the batcher", ["model", "reason"], registry=r
        )
        self.model_info = Gauge(
            "rescom_model_info",
            "served model version and the provider it really runs on",
            ["model", "version", "provider"],
            registry=r,
        )
        self.load_failures = Counter(
            "rescom_model_load_failures", "model versions refused", ["model"], registry=r
        )
        self.ready = Gauge("rescom_ready", "1 when the service reports ready", registry=r)
        self.label_shift_kl = Gauge(
            "rescom_label_shift_kl",
            "KL divergence (nats) of the adaptive prior estimate from the training prior",
            ["model"],
            registry=r,
        )
        self.prediction_share = Gauge(
            "rescom_prediction_share",
            "share of the recent window predicted as each class (calibrated, uniform prior)",
            ["model", "class"],
            registry=r,
        )
        self.label_shift_window = Gauge(
            "rescom_label_shift_window_images",
            "images in the window behind rescom_label_shift_kl and rescom_prediction_share",
            ["model"],
            registry=r,
        )
        self._share_classes: dict[str, tuple[str, ...]] = {}

    def observer(self, model: str) -> ModelObserver:
        """A :class:`service.batcher.BatchObserver` writing into this registry for ``model``."""
        return ModelObserver(self, model)

    def set_model(
        self, model: str, version: int, provider: str, previous: tuple[int, str] | None = None
    ) -> None:
        """Publish the served version (and retire the previous one's info sample)."""
        if previous is not None:
            try:
                self.model_info.remove(model, str(previous[0]), previous[1])
            except KeyError:
                pass
        self.model_info.labels(model, str(version), provider).set(1)

    def retire_model(self, model: str, version: int, provider: str) -> None:
        """Drop a version that is no longer served from ``rescom_model_info``."""
        try:
            self.model_info.remove(model, str(version), provider)
        except KeyError:
            pass

    def set_label_shift(
        self, model: str, class_names: tuple[str, ...], kl: float, share: list[float], window_images: int
    ) -> None:
        """Publish one model's label-shift figures (class labels of an earlier version are dropped)."""
        previous = self._share_classes.get(model, ())
        for name in set(previous) - set(class_names):
            try:
                self.prediction_share.remove(model, name)
            except KeyError:
                pass
        self._share_classes[model] = class_names
        self.label_shift_kl.labels(model).set(kl)
        self.label_shift_window.labels(model).set(window_images)
        for name, value in zip(class_names, share, strict=True):
            self.prediction_share.labels(model, name).set(value)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class ModelObserver:
    """Batching statistics of one model (pre-bound label children, so the hot path does no label lookups).

    Args:
        metrics: the service's metrics, whose batching series this observer feeds.
        model: the model's name (the ``model`` label).
    """

    def __init__(self, metrics: ServiceMetrics, model: str) -> None:
        self._images = metrics.images.labels(model)
        self._batch = metrics.batch_size.labels(model)
        self._batch_s = metrics.batch_seconds.labels(model)
        self._queue_s = metrics.queue_seconds.labels(model)
        self._depth = metrics.queue_depth.labels(model)
        self._rejected = {r: metrics.rejected.labels(model, r) for r in ("queue_full", "timeout")}

    def on_batch(self, rows: int, seconds: float) -> None:
        """Record one model call."""
        self._images.inc(rows)
        self._batch.observe(rows)
        self._batch_s.observe(seconds)

    def on_queue_wait(self, seconds: float) -> None:
        """Record one request's wait in the queue."""
        self._queue_s.observe(seconds)

    def on_depth(self, rows: int) -> None:
        """Record the queue depth."""
        self._depth.set(rows)

    def on_reject(self, reason: str) -> None:
        """Record a rejection."""
        self._rejected[reason].inc()
