"""Raw ONNX Runtime reference, no HTTP: the floor every server is compared with.

Measured in this process with the same :class:`apps.pipeline.Pipeline` (same session options and thread count
as the servers): ORT batch-1 latency, ORT batch-``max_batch_size`` throughput, decode + preprocess cost per
image, and calibration + JSON cost per image; then the engine's own limit with the servers' compute (N instances
x T ORT threads): N processes, each with its own Pipeline (own ORT session), each looping decode of 32 PNGs ->
ORT batch 32 -> calibration + top-k + JSON (issue 12's "raw ONNX Runtime, decode + ORT b32 + top-5, no HTTP"),
and the same N sessions running ORT batch 32 alone.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks.serving.apps.pipeline import AppSettings, Pipeline
from benchmarks.serving.workload import Image

__all__ = ["Reference", "measure_engine", "measure_reference"]


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
    instances: int = 1  # concurrent sessions in the two figures below
    engine_img_s: float | None = None  # N sessions: decode + ORT batch + calibration/top-k/JSON, no HTTP
    ort_batch_img_s_instances: float | None = None  # N sessions: ORT batch alone

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


def _whole_round(pipeline: Pipeline, chunk: list[bytes]) -> int:
    """One engine round: decode ``chunk`` + ORT batch + calibration/top-k/JSON; returns the images done."""
    logits = pipeline.infer(pipeline.decode_many(chunk))  # [b, C]
    for doc in pipeline.respond(logits):
        pipeline.encode(doc)
    return len(chunk)


def _ort_round(pipeline: Pipeline, x: np.ndarray) -> int:
    """One ORT-only round on pre-decoded images ``x`` ``[b, crop, crop, 3]``; returns the images done."""
    pipeline.infer(x)
    return len(x)


def _instance(
    settings: AppSettings, chunks: list[list[bytes]], k: int, rounds: int, phase_start: Any, out: Any
) -> None:
    """One engine instance in its own process (own Pipeline, own ORT session): the whole job, then ORT alone.

    Each phase starts when every instance has reached ``phase_start``; puts ``[(images, t0, t1)]`` per phase.
    """
    pipeline = Pipeline(settings)
    x = pipeline.decode_many(chunks[0])  # [b, crop, crop, 3] uint8, for the ORT-only phase
    for i in range(2):  # warm
        _whole_round(pipeline, chunks[(k + i) % len(chunks)])
    phases: list[Callable[[int], int]] = [
        lambda i: _whole_round(pipeline, chunks[(k + i) % len(chunks)]),
        lambda i: _ort_round(pipeline, x),
    ]
    timings = []
    for phase in phases:
        phase_start.wait()
        t0 = time.perf_counter()
        done = sum(phase(i) for i in range(rounds))
        timings.append((done, t0, time.perf_counter()))
    out.put(timings)


def _processes_img_s(settings: AppSettings, chunks: list[list[bytes]], n: int, rounds: int) -> list[float]:
    """Images per second of ``n`` instances side by side, each in its own process (no shared GIL), per phase."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no ORT session or thread inherited from the harness
    phase_start, out = ctx.Barrier(n + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_instance, args=(settings, chunks, k, rounds, phase_start, out), daemon=True)
        for k in range(n)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in range(2):  # the whole job, then ORT alone
            phase_start.wait(timeout=600)
        results = [out.get(timeout=600) for _ in procs]  # [instance][phase] -> (images, t0, t1)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    rates = []
    for phase in zip(*results, strict=True):
        first, last = min(r[1] for r in phase), max(r[2] for r in phase)  # perf_counter: CLOCK_MONOTONIC
        rates.append(sum(r[0] for r in phase) / (last - first))
    return rates


def measure_engine(
    settings: AppSettings, instances: int, images: list[Image], batch: int, quick: bool
) -> tuple[float, float]:
    """The engine's limit with ``instances`` ORT sessions, each in its own process, no HTTP.

    Processes, not threads: decode and calibration hold the GIL, so threads of one process would measure the
    harness's GIL rather than the engine (on a 2-core AMD EPYC VM, 2 threads reached 0.91 and 0.97 of what 2
    processes reach, in two alternating runs).

    Returns:
        ``(engine_img_s, ort_batch_img_s)``: decode of ``batch`` PNGs + ORT batch + calibration/top-k/JSON
        per round; and ORT batch alone, on pre-decoded images.
    """
    blobs = [im.png for im in images]
    chunks = [blobs[i : i + batch] for i in range(0, len(blobs) - batch + 1, batch)] or [blobs]
    rounds = 8 if quick else 40
    engine, ort_only_img_s = _processes_img_s(settings, chunks, instances, rounds)
    return engine, ort_only_img_s
