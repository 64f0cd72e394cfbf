"""Triton's model statistics extension (``GET /v2/models[/NAME[/versions/V]]/stats``).

It is built from what the service already measures.

Per served model version, as Triton's ``ModelStatistics`` JSON (durations in ns, ``last_inference`` in ms since
the epoch):

- ``inference_count`` (images run), ``execution_count`` (model calls), ``inference_stats.queue`` (time requests
  waited to be batched) and ``inference_stats.compute_infer`` (model calls): from the batcher's metrics, so
  every transport (``/predict``, HTTP v2, gRPC) counts;
- ``inference_stats.success`` / ``fail`` (requests and their time in the server) and ``last_inference``:
  recorded by :class:`RequestStats` around each inference request.

The batcher's metrics are per model name (every version served since the start), reported under the version
being served. Success and fail are recorded by :func:`service.v2_protocol.infer` (HTTP v2 and gRPC) and
:func:`service.inference.predict_encoded` (``/predict``, from the batch submission to the calibrated
probabilities). ``compute_input`` / ``compute_output``
(Triton's tensor copies) are zero: the batcher hands numpy arrays to ONNX Runtime directly. ``batch_stats`` is
empty: the batch-size histogram has power-of-two buckets, not one count per size.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from service.registry import ServedModel

__all__ = ["RequestStats", "model_statistics"]


@dataclass
class _Counts:
    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    last_ms: int = 0


class RequestStats:
    """Request outcomes per ``(model, version)``: count and total nanoseconds of successes and failures."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], _Counts] = defaultdict(_Counts)

    def record(self, name: str, version: int, started_ns: int, ok: bool) -> None:
        """Record one request that started at ``time.perf_counter_ns() == started_ns`` and just finished."""
        c = self._counts[(name, version)]
        elapsed = time.perf_counter_ns() - started_ns
        if ok:
            c.success, c.success_ns = c.success + 1, c.success_ns + elapsed
        else:
            c.fail, c.fail_ns = c.fail + 1, c.fail_ns + elapsed
        c.last_ms = int(time.time() * 1000)

    @contextlib.contextmanager
    def timed(self, name: str, version: int) -> Iterator[None]:
        """Record the request run inside the block: a success unless the block raises."""
        started, ok = time.perf_counter_ns(), False
        try:
            yield
            ok = True
        finally:
            self.record(name, version, started, ok)

    def get(self, name: str, version: int) -> _Counts:
        """The counts of one model version (zeros when it had no request)."""
        return self._counts.get((name, version), _Counts())


def _duration(registry: CollectorRegistry, metric: str, model: str) -> dict[str, int]:
    count = registry.get_sample_value(f"{metric}_count", {"model": model}) or 0.0
    total = registry.get_sample_value(f"{metric}_sum", {"model": model}) or 0.0
    return {"count": int(count), "ns": int(total * 1e9)}


def model_statistics(
    served: ServedModel, requests: RequestStats, registry: CollectorRegistry
) -> dict[str, Any]:
    """One entry of Triton's ``model_stats`` list for a served model version."""
    c = requests.get(served.name, served.version)
    compute = _duration(registry, "rescom_batch_duration_seconds", served.name)
    zero = {"count": 0, "ns": 0}
    images = registry.get_sample_value("rescom_images_total", {"model": served.name}) or 0.0
    return {
        "name": served.name,
        "version": str(served.version),
        "last_inference": c.last_ms,
        "inference_count": int(images),
        "execution_count": compute["count"],
        "inference_stats": {
            "success": {"count": c.success, "ns": c.success_ns},
            "fail": {"count": c.fail, "ns": c.fail_ns},
            "queue": _duration(registry, "rescom_queue_duration_seconds", served.name),
            "compute_input": dict(zero),
            "compute_infer": compute,
            "compute_output": dict(zero),
            "cache_hit": dict(zero),
            "cache_miss": dict(zero),
        },
        "batch_stats": [],
    }
