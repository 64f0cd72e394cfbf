"""Raw ONNX Runtime reference, no HTTP: the floor every server is compared with.

Measured in this process with the same :class:`apps.pipeline.Pipeline` (same session options and thread count
as the servers): ORT batch-1 latency, ORT batch-``max_batch_size`` throughput, decode + preprocess cost per
image, and calibration + JSON cost per image.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks.serving.apps.pipeline import Pipeline
from benchmarks.serving.workload import Image

__all__ = ["Reference", "measure_reference"]


@dataclass
class Reference:
    """Raw ORT numbers (ms unless named otherwise)."""

    ort_b1_p50_ms: float
    ort_b1_p99_ms: float
    ort_batch: int
    ort_batch_ms: float  # median call time of one full batch
    ort_batch_img_s: float
    ort_b1_img_s: float
    decode_ms: float  # Pillow decode + resize_center_crop, per image
    respond_ms: float  # calibration + top-k + JSON, per image (batch of 1)
    threads: int

    @property
    def c1_floor_ms(self) -> float:
        """What one request costs without a server: decode + ORT batch 1 + calibration/JSON."""
        return self.decode_ms + self.ort_b1_p50_ms + self.respond_ms

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {**asdict(self), "c1_floor_ms": self.c1_floor_ms}


def _times(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure_reference(
    pipeline: Pipeline, images: list[Image], batch: int, threads: int, quick: bool
) -> Reference:
    """Time the pieces of one request on ``images`` (all of them are decoded for the inputs)."""
    blobs = [im.png for im in images]
    rounds = 1 if quick else 3
    t = time.perf_counter()
    for _ in range(rounds):
        x = pipeline.decode_many(blobs)
    decode_ms = (time.perf_counter() - t) / (rounds * len(blobs)) * 1e3
    n1 = 100 if quick else 400
    for i in range(20):  # warm
        pipeline.infer(x[i : i + 1])
    b1 = []
    for i in range(n1):  # a different image each call
        one = x[i % len(x) : i % len(x) + 1]
        t = time.perf_counter()
        pipeline.infer(one)
        b1.append(time.perf_counter() - t)
    nb = 10 if quick else 40
    xb = x[:batch] if len(x) >= batch else np.resize(x, (batch, *x.shape[1:]))
    for _ in range(3):
        pipeline.infer(xb)
    bt = _times(lambda: pipeline.infer(xb), nb)
    logits = pipeline.infer(x[:1])
    resp = _times(lambda: [pipeline.encode(d) for d in pipeline.respond(logits)], 500)
    b1_p50 = statistics.median(b1)
    batch_ms = statistics.median(bt)
    return Reference(
        ort_b1_p50_ms=b1_p50 * 1e3,
        ort_b1_p99_ms=float(np.percentile(b1, 99)) * 1e3,
        ort_batch=batch,
        ort_batch_ms=batch_ms * 1e3,
        ort_batch_img_s=batch / batch_ms,
        ort_b1_img_s=1.0 / b1_p50,
        decode_ms=decode_ms,
        respond_ms=statistics.median(resp) * 1e3,
        threads=threads,
    )
