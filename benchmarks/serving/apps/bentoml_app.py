"""BentoML peer: BENCH_INSTANCES worker processes (each: HTTP + adaptive batching + one inference thread).

    BENCH_MODEL_DIR=models/digits_lt/1 bentoml serve benchmarks.serving.apps.bentoml_app:Classifier \
        --host 127.0.0.1 --port 8103

``POST /predict`` with the raw image as the body answers the service's JSON document. BentoML reads JSON or
multipart bodies by default, so the input spec reads the raw body into a one-element list (``batch_dim=0``:
requests are concatenated into one list per batch) and the output spec sends the pipeline's pre-encoded JSON.
Batching: ``batchable=True, max_batch_size=BENCH_MAX_BATCH``; BentoML has no fixed queue-delay knob (its
CorkDispatcher adapts the window to a fitted cost model and to ``max_latency_ms``), so ``max_latency_ms`` is set
as BentoML's docs recommend, to the latency objective: ``BENCH_BENTOML_MAX_LATENCY_MS`` (200 ms by default;
beyond it BentoML sheds with 503, counted as errors). It was the 10 s request timeout before, which let the
dispatcher hold requests for hundreds of ms. ``workers=BENCH_INSTANCES`` ("each running in its process",
BentoML's workers guide; each builds its own Pipeline in ``__init__``, ``BENCH_ORT_THREADS`` ORT threads),
``threads=1``. BentoML's ``/metrics`` has ``bentoml_service_adaptive_batch_size``.
"""

from __future__ import annotations

import os
import typing as t

import bentoml
from _bentoml_sdk.io_models import IORootModel
from starlette.requests import Request
from starlette.responses import Response

from benchmarks.serving.apps.pipeline import AppSettings, Pipeline

SETTINGS = AppSettings.from_env()


class RawImage(IORootModel):
    """The request body is one encoded image; the batchable API sees a list of them."""

    root: list[bytes]

    @classmethod
    async def from_http_request(cls, request: Request, serde: t.Any) -> RawImage:  # noqa: D102
        return cls([await request.body()])


class JSONBody(IORootModel):
    """One pre-encoded JSON document per request."""

    root: list[bytes]

    @classmethod
    async def to_http_response(cls, obj: t.Any, serde: t.Any) -> Response:  # noqa: D102
        return Response(content=obj[0], media_type="application/json")


@bentoml.service(
    workers=SETTINGS.instances,
    threads=1,
    traffic={"timeout": SETTINGS.timeout_s},
    logging={"access": {"enabled": False}},  # the service runs without an access log too
)
class Classifier:
    """decode + one ONNX Runtime call + calibration for each adaptive batch."""

    def __init__(self) -> None:
        self.pipeline = Pipeline(SETTINGS)

    @bentoml.api(
        route="/predict",
        input_spec=RawImage,
        output_spec=JSONBody,
        batchable=True,
        batch_dim=0,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=int(float(os.environ.get("BENCH_BENTOML_MAX_LATENCY_MS", SETTINGS.timeout_s * 1000))),
    )
    def predict(self, images: list[bytes]) -> list[bytes]:  # noqa: D102
        return self.pipeline.handle(images)
