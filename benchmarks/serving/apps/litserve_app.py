"""LitServe peer: one API server process (uvicorn) + BENCH_INSTANCES inference worker processes with LitServe's batching loop.

    BENCH_MODEL_DIR=models/digits_lt/1 BENCH_PORT=8102 python -m benchmarks.serving.apps.litserve_app

``POST /predict`` with the raw image as the body (``decode_request`` takes ``Annotated[bytes, Body()]``, which FastAPI
fills with the raw body for a non-JSON Content-Type) answers the service's JSON document, pre-encoded by the pipeline
and returned as a ready ``Response``. Batching: ``LitAPI(max_batch_size=BENCH_MAX_BATCH,
batch_timeout=BENCH_DELAY_MS / 1000)``, ``workers_per_device=BENCH_INSTANCES`` (LitServe's docstring: "For CPU,
set to the number of cores available on the machine"; each worker process has its own Pipeline with
``BENCH_ORT_THREADS`` threads), ``num_api_servers=1``, ``fast_queue=True``
(ZeroMQ instead of a multiprocessing queue, LitServe's documented fast path). No batch-size metric: the
harness counts batches in the pipeline.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation as a live object.

from typing import Annotated

import litserve as ls
import numpy as np
from fastapi import Body
from starlette.responses import Response

from benchmarks.serving.apps.pipeline import AppSettings, Pipeline


class ClassifyAPI(ls.LitAPI):
    """decode per request -> stack -> one ONNX Runtime call -> calibrated JSON per request."""

    def setup(self, device: str) -> None:  # noqa: D102
        self.pipeline = Pipeline(AppSettings.from_env())

    def decode_request(self, request: Annotated[bytes, Body()]) -> np.ndarray:  # noqa: D102
        return self.pipeline.decode(request)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:  # noqa: D102
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> list[bytes]:  # noqa: D102
        logits = self.pipeline.infer(x)
        return [self.pipeline.encode(doc) for doc in self.pipeline.respond(logits)]

    def unbatch(self, output: list[bytes]) -> list[bytes]:  # noqa: D102
        return output

    def encode_response(self, output: bytes) -> Response:  # noqa: D102
        return Response(content=output, media_type="application/json")


def main() -> None:
    """Start LitServe on BENCH_HOST:BENCH_PORT."""
    s = AppSettings.from_env()
    api = ClassifyAPI(
        max_batch_size=s.max_batch_size, batch_timeout=s.max_delay_ms / 1000.0, api_path="/predict"
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=s.instances,
        timeout=s.timeout_s,
        fast_queue=True,
    )
    server.run(host=s.host, port=s.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
