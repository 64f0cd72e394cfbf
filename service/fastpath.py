"""The hot path: ``POST /predict`` with a raw image body, served without FastAPI's per-request machinery.

Measured on a 2-core box, FastAPI's routing, request objects, dependency solving and exception middleware cost
about as much CPU per request as decoding, batching and calibration together. This ASGI middleware sits in
front of them and answers exactly one request shape (``POST /predict``, ``Content-Type: image/*``,
``application/octet-stream`` or none) with the same helpers as the FastAPI route (:mod:`service.routes.predict`):
same options, same validation, same errors, same metrics. Every other request, including the multipart and
JSON forms of ``/predict``, goes on to FastAPI, where ``/predict`` also stays documented in OpenAPI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import authorization_header, verify_bearer
from service.errors import BadRequest, PayloadTooLarge, ServiceError, ShuttingDown
from service.inference import predict_encoded
from service.registry import ServedModel
from service.responses import dumps
from service.routes.predict import EMPTY_BODY, is_raw_image, parse_query

__all__ = ["PredictFastPath", "PredictCounters", "admit_raw", "error_answer", "check_content_length", "ROUTE"]

log = logging.getLogger("rescom.service")
ROUTE = "/predict"


class PredictFastPath:
    """Serve raw-body ``POST /predict`` directly; pass everything else to ``app``.

    Args:
        app: the ASGI app that answers every other request.
        fastapi_app: the FastAPI app whose ``state.rescom`` serves the fast path, when this wraps the whole
            app (outside FastAPI's own middleware); ``None``: taken from the request scope's ``app``.
    """

    def __init__(self, app: ASGIApp, fastapi_app: Any = None) -> None:
        self.app = app
        self.fastapi_app = fastapi_app  # set when this wraps the whole app (outside FastAPI's own middleware)
        self.counters = PredictCounters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: answer a raw-body ``POST /predict`` here, hand anything else to ``app``."""
        if scope["type"] != "http" or scope["path"] != ROUTE or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = getattr(getattr(self.fastapi_app or scope.get("app"), "state", None), "rescom", None)
        content_type = content_length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"content-length":
                content_length = value
        if state is None or not is_raw_image(content_type or ""):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers: dict[str, str] = {}
        try:
            served, options = admit_raw(state, scope["headers"], scope["query_string"], content_length)
            try:  # the lease is taken before the body is read
                body = await _read_body(receive, state.settings.max_body_bytes)
                if not body:
                    raise BadRequest(EMPTY_BODY)
                status, payload = 200, dumps(await predict_encoded(state, served, [body], **options))
            finally:
                state.registry.release(served)
        except ServiceError as err:
            status, payload, headers = error_answer(err)
        except asyncio.CancelledError:  # still running when the graceful shutdown's drain timeout ran out
            log.warning("POST %s cancelled by the shutdown; answered 503", ROUTE)
            stopping = ShuttingDown()
            status, payload, headers = (
                stopping.status_code,
                dumps({"error": stopping.message}),
                stopping.headers,
            )
        except Exception:
            log.exception("unhandled error in POST %s", ROUTE)
            status, payload = 500, dumps({"error": "internal error"})
        raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})
        self.counters.record(state.metrics, status, time.perf_counter() - start)


class PredictCounters:
    """``rescom_requests_total`` and ``rescom_request_duration_seconds`` of ``POST /predict``, children bound once.

    Label lookups cost more than the increments, so each (metrics registry, status) pair is looked up once.
    """

    def __init__(self) -> None:
        self._children: dict[tuple[int, int], tuple[Any, Any]] = {}

    def record(self, metrics: Any, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        key = (id(metrics), status)
        children = self._children.get(key)
        if children is None:
            children = (
                metrics.requests.labels(ROUTE, "POST", str(status)),
                metrics.latency.labels(ROUTE, "POST"),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def error_answer(err: ServiceError) -> tuple[int, bytes, dict[str, str]]:
    """``(status, JSON body, extra headers)`` of a :class:`ServiceError`, as every ``/predict`` path answers it."""
    return err.status_code, dumps({"error": err.message}), dict(err.headers)


def check_content_length(content_length: bytes | None, limit: int) -> None:
    """Refuse a declared body above ``limit`` bytes before reading it.

    Raises:
        BadRequest: ``Content-Length`` is not an integer. PayloadTooLarge: it is above ``limit``.
    """
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        raise BadRequest("Content-Length is not an integer") from None
    if declared > limit:
        raise PayloadTooLarge(
            f"request body is {declared} bytes; the limit is {limit} (RESCOM_MAX_BODY_BYTES)"
        )


def admit_raw(
    state: Any, headers: Iterable[tuple[bytes, bytes]], query: bytes, content_length: bytes | None
) -> tuple[ServedModel, dict[str, Any]]:
    """Check a raw-body ``POST /predict`` before its body: bearer token, query options, model lease, body size.

    In that order, on every path that serves this request shape.

    Returns:
        The leased model (end the lease with ``state.registry.release``) and the remaining options (``top_k``,
        ``prior``, ``temperature``).

    Raises:
        ServiceError: 401, 400/422 (options), 404/503 (model), 400/413 (Content-Length); nothing is leased then.
    """
    settings = state.settings
    if settings.api_key is not None:
        verify_bearer(authorization_header(headers), settings.api_key)
    options = parse_query(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    served = state.registry.acquire(options.pop("model"), options.pop("version"))
    try:
        check_content_length(content_length, settings.max_body_bytes)
    except BaseException:
        state.registry.release(served)
        raise
    return served, options


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes while reading (a declared size is checked before)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes (RESCOM_MAX_BODY_BYTES)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
