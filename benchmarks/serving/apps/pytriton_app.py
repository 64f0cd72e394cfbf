"""Triton via PyTriton: Triton's C++ HTTP front end and dynamic batcher, the model as a Python callable.

    BENCH_MODEL_DIR=models/digits_lt/1 BENCH_PORT=8104 BENCH_GRPC_PORT=8105 BENCH_METRICS_PORT=8106 \
        LD_LIBRARY_PATH=<dir of libpython3.11.so> python -m benchmarks.serving.apps.pytriton_app

Model ``classify``: input ``image`` BYTES ``[-1, 1]`` (one encoded image per row), output ``result`` BYTES
``[-1, 1]`` (the service's JSON document). Clients send KServe v2 binary requests
(``POST /v2/models/classify/infer``, ``Inference-Header-Content-Length``) with the PNG as the raw tensor
bytes, and read the document from ``outputs[0].data[0]``. Batching: Triton's dynamic batcher,
``max_batch_size=BENCH_MAX_BATCH``, ``max_queue_delay_microseconds=BENCH_DELAY_MS * 1000``, BENCH_INSTANCES
model instances: ``bind(infer_func=[...])`` with one callable per instance ("list of inference callable for multi
instance model", PyTriton 0.7.0's ``Triton.bind``; it sets the CPU ``instance_group`` count), each with its own
Pipeline (ORT session, ``BENCH_ORT_THREADS`` threads), served by threads of this one Python process. Triton's metrics (``nv_inference_exec_count``) are on ``BENCH_METRICS_PORT``.
"""

from __future__ import annotations

import os

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.serving.apps.pipeline import AppSettings, Pipeline

MODEL = "classify"


def make_infer(pipeline: Pipeline):  # noqa: ANN201 (PyTriton wraps the callable)
    """The batched callable: ``image`` object array ``[n, 1]`` of bytes -> ``result`` ``[n, 1]`` of bytes."""

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        blobs = [bytes(row[0]) for row in image]
        out = np.empty((len(blobs), 1), dtype=object)
        out[:, 0] = pipeline.handle(blobs)
        return {"result": out}

    return infer


def main() -> None:
    """Start Triton on BENCH_HOST:BENCH_PORT (HTTP), BENCH_GRPC_PORT and BENCH_METRICS_PORT."""
    s = AppSettings.from_env()
    infer_funcs = [make_infer(Pipeline(s)) for _ in range(s.instances)]  # one ORT session per instance
    config = TritonConfig(
        http_address=s.host,
        http_port=s.port,
        grpc_address=s.host,
        grpc_port=int(os.environ["BENCH_GRPC_PORT"]),
        metrics_address=s.host,
        metrics_port=int(os.environ["BENCH_METRICS_PORT"]),
        log_verbose=0,
        exit_timeout_secs=5,
    )
    with Triton(config=config, workspace=os.environ.get("BENCH_WORKSPACE")) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=infer_funcs,
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="result", dtype=bytes, shape=(1,))],
            config=ModelConfig(
                max_batch_size=s.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(s.max_delay_ms * 1000)),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
