"""Mosec peer: one worker stage (decode + ONNX Runtime + calibration), dynamic batching in Mosec's Rust core.

    BENCH_MODEL_DIR=models/digits_lt/1 BENCH_PORT=8101 python -m benchmarks.serving.apps.mosec_app

``POST /predict`` with the raw image as the body answers the service's JSON document. Batching:
``append_worker(max_batch_size=BENCH_MAX_BATCH, max_wait_time=BENCH_MOSEC_WAIT_MS)`` (Mosec's unit: integer
milliseconds; 5 ms by default, where the independent comparison of issue 12 found Mosec best, rather than our
2 ms window), ``num=BENCH_INSTANCES`` worker processes (Mosec's ``num``: "the number of processes for
parallel computing"), each with its own Pipeline (ORT session, ``BENCH_ORT_THREADS`` threads): the same N x T as
the service's instances. Mosec's ``/metrics`` reports its own batch sizes.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from mosec import Server, Worker

from benchmarks.serving.apps.pipeline import AppSettings, Pipeline


class Classify(Worker):
    """Raw image bytes in (no JSON ingress), pre-encoded JSON bytes out."""

    resp_mime_type = "application/json"

    def __init__(self) -> None:
        super().__init__()
        self.pipeline = Pipeline(AppSettings.from_env())

    def deserialize(self, data: bytes) -> bytes:  # noqa: D102 (the body is the image)
        return data

    def serialize(self, data: Any) -> bytes:  # noqa: D102 (already JSON bytes)
        return data

    def forward(self, data: list[bytes]) -> list[bytes]:  # noqa: D102
        return self.pipeline.handle(data)


def main() -> None:
    """Start Mosec on BENCH_HOST:BENCH_PORT."""
    s = AppSettings.from_env()
    sys.argv = [
        sys.argv[0],
        "--address",
        s.host,
        "--port",
        str(s.port),
        "--timeout",
        str(int(s.timeout_s * 1000)),
        "--log-level",
        "warning",
    ]
    server = Server()
    server.append_worker(
        Classify,
        num=s.instances,
        max_batch_size=s.max_batch_size,
        max_wait_time=max(1, math.ceil(float(os.environ.get("BENCH_MOSEC_WAIT_MS", s.max_delay_ms)))),
        route="/predict",
    )
    server.run()


if __name__ == "__main__":
    main()
