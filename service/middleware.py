"""Pure ASGI middleware (cheaper than ``BaseHTTPMiddleware`` on the hot path): request metrics, body limit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, ShuttingDown
from service.responses import dumps

__all__ = ["MetricsMiddleware", "BodyLimitMiddleware", "InternalErrorMiddleware"]

log = logging.getLogger("rescom.service")


def _state(scope: Scope) -> Any:
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "rescom", None)


class MetricsMiddleware:
    """Counts requests by route template, method and status, and times them.

    Metrics ``rescom_requests_total`` and ``rescom_request_duration_seconds``; unmatched paths share the label
    ``unmatched``.

    Args:
        app: the wrapped ASGI app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: run ``app`` and record the request's count and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = _state(scope)
            if state is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                method = scope["method"]
                metrics = state.metrics
                metrics.requests.labels(route, method, str(status)).inc()
                metrics.latency.labels(route, method).observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """Refuses bodies above ``Settings.max_body_bytes`` with 413.

    At once from ``Content-Length``, or while streaming (chunked uploads) by raising
    :class:`~service.errors.PayloadTooLarge` from ``receive``.

    Args:
        app: the wrapped ASGI app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: refuse an oversized body (413), else run ``app`` with a checked ``receive``."""
        state = _state(scope)
        if scope["type"] != "http" or state is None:
            await self.app(scope, receive, send)
            return
        limit = state.settings.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length > limit:
                    await _send_error(
                        send,
                        413,
                        f"request body is {length} bytes; the limit is {limit} (RESCOM_MAX_BODY_BYTES)",
                    )
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(
                        f"request body exceeds the limit of {limit} bytes (RESCOM_MAX_BODY_BYTES)"
                    )
            return message

        await self.app(scope, limited_receive, send)


async def _send_error(
    send: Send, status: int, message: str, close: bool = True, extra: Mapping[str, str] | None = None
) -> None:
    body = dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    if close:
        headers.append((b"connection", b"close"))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers,
        }
    )
    await send({"type": "http.response.body", "body": body})


class InternalErrorMiddleware:
    """Last resort for unexpected exceptions: log the traceback server-side, answer ``{"error": "internal error"}``.

    Unlike Starlette's ``ServerErrorMiddleware`` it does not re-raise, so uvicorn keeps the connection alive and
    nothing about the failure reaches the client.

    A request whose task is cancelled before it answered (uvicorn does that to requests still running when the
    graceful shutdown's drain timeout runs out) gets a clean 503 :class:`~service.errors.ShuttingDown` instead of
    uvicorn's plain-text 500 and a logged traceback.

    Args:
        app: the wrapped ASGI app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: run ``app``; answer an unhandled error or cancellation as JSON if unanswered."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except asyncio.CancelledError:
            if started:
                raise
            log.warning(
                "%s %s cancelled by the shutdown; answered 503", scope.get("method"), scope.get("path")
            )
            err = ShuttingDown()
            await _send_error(send, err.status_code, err.message, extra=err.headers)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for a clean response; uvicorn closes the connection
            await _send_error(send, 500, "internal error", close=False)
