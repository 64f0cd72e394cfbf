"""The HTTP/1.1 connection protocol: uvicorn's httptools protocol with limits on what a client can make it hold.

uvicorn's httptools protocol buffers a request line and header lines of any length, waits for slow senders
forever and answers parse errors in plain text. This subclass enforces, per connection and before the request
reaches routing, auth or the app:

- request target longer than ``max_request_line_bytes`` -> 414; request line + headers longer than
  ``max_header_bytes`` or more than ``max_headers`` lines -> 431 (checked after each received chunk, so at most
  one socket read, <= 256 KiB, is held beyond the limit);
- the request line and headers must arrive within ``header_timeout_s`` of the first byte (or of the
  connection being opened) and the body within ``body_timeout_s`` of the headers -> 408, connection closed;
- more than ``max_connections`` open connections -> 503 with ``Retry-After``, closed at once;
- every error the protocol writes itself (also the 400 for unparsable HTTP) is the service's JSON
  ``{"error": "..."}``.

During a shutdown (:class:`service.server.DrainingServer`) responses carry ``Connection: close`` so keep-alive
clients reconnect elsewhere, and a connection that has not finished sending its request when the listener
closes is still read and answered (its header timeout bounds the wait).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.responses import dumps

__all__ = ["ConnectionLimits", "WholeResponseWriter", "limited_protocol", "error_bytes", "json_response"]

IDLE_GRACE_S = 1.0  # at shutdown: how long a connection without a request may still start one


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may make the server hold (:class:`service.config.Settings` fields of the same names)."""

    max_request_line_bytes: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1024
    draining: Callable[[], bool] = lambda: (
        False
    )  # True once SIGTERM arrived: close keep-alive after responses


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that broke a limit."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def json_response(
    status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = (), *, close: bool
) -> bytes:
    """A complete HTTP/1.1 response with a JSON ``body``, as the protocol writes it itself (one write).

    Status line, ``headers`` (lower-case names), content type and length, and ``Connection: close`` when
    ``close``.
    """
    head = [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in headers)]
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
    if close:
        head.append(b"connection: close\r\n")
    return b"".join(head) + b"\r\n" + body


def error_bytes(status: int, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with the service's JSON error body."""
    return json_response(status, dumps({"error": message}), extra, close=True)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`ConnectionLimits` (set as ``limits`` by :func:`limited_protocol`)."""

    limits: ConnectionLimits = ConnectionLimits()
    hot_route: Any = (
        None  # answers some requests itself: ``cycle_for(protocol) -> cycle | None`` (service.hotpath)
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = (
            True  # between the first byte of a request (or the connection) and its headers' end
        )
        self._header_bytes = 0
        self._header_count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._shutting_down = False
        self._begun = False  # from a request's first byte until its last
        self._body_pending = False  # headers in, body expected and not complete

    # ---------------------------------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: refused with 503 above ``max_connections``, else the header timeout starts."""
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503,
                f"too many open connections (limit {self.limits.max_connections}, RESCOM_MAX_CONNECTIONS); "
                "retry shortly",
                ((b"retry-after", b"1"),),
            )
            return
        self._arm(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection closed: stop its timer, then uvicorn's cleanup."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed ``data`` to the parser, counting header bytes against ``max_header_bytes`` and arming the timeouts."""
        if self._refused:
            return
        counted = self._in_headers  # a chunk that starts inside the headers counts whole
        self._feed(data)
        if self._refused:
            return
        if counted and self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(
                    431,
                    f"request line and headers exceed {self.limits.max_header_bytes} bytes (RESCOM_MAX_HEADER_BYTES)",
                )
                return
        if self._timer is None:  # armed only when a request is left half-received (not for one-chunk ones)
            if self._begun and self._in_headers:
                self._arm(self.limits.header_timeout_s, self._header_timeout)
            elif self._body_pending:
                self._arm(self.limits.body_timeout_s, self._body_timeout)

    def _feed(self, data: bytes) -> None:
        """The ``data_received`` of uvicorn, but refusals and parse errors are answered in JSON, unlogged.

        No log line per request: a flood of bad requests must not become a flood of log lines.
        """
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except (httptools.HttpParserError, _Refused) as exc:
            refused = _refusal_behind(exc)
            if refused is not None:
                self._refuse(refused.status, refused.message)
            else:
                self.logger.debug("malformed HTTP request: %s", exc)
                self._refuse(400, f"malformed HTTP request: {str(exc)[:100] or 'unparsable'}")

    def _unsupported_upgrade_warning(self) -> None:
        """An ``Upgrade`` request is served as a plain request (the service has no WebSocket routes).

        Not logged as a warning each time, as uvicorn does.
        """
        self.logger.debug("Upgrade header ignored: the service has no WebSocket routes")

    def send_400_response(self, msg: str) -> None:
        """Answer uvicorn's invalid-request case with the service's JSON 400 (``Connection: close``)."""
        self._refuse(400, "malformed HTTP request: " + msg.rstrip(".").lower())

    # ---------------------------------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        """Parser callback: a request starts; its header counters restart."""
        super().on_message_begin()
        self._begun = True
        self._in_headers = True
        self._header_bytes = 0
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        """Parser callback: the request target, refused with 414 above ``max_request_line_bytes``."""
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line_bytes:
            raise _Refused(
                414,
                f"request target exceeds {self.limits.max_request_line_bytes} bytes (RESCOM_MAX_REQUEST_LINE_BYTES)",
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        """Parser callback: one header line, refused with 431 beyond ``max_headers`` lines."""
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _Refused(431, f"more than {self.limits.max_headers} header lines (RESCOM_MAX_HEADERS)")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Parser callback: the headers are in; stop the header timeout, note whether a body is expected.

        A request the ``hot_route`` takes is answered by its own cycle (no ASGI task); any other goes to the app.
        """
        self._in_headers = False
        self._disarm()
        hot = self.hot_route.cycle_for(self) if self.hot_route is not None else None
        if hot is not None:
            self._body_pending = self._expects_body()  # before the cycle may answer (an early 401, say)
            self._begin_hot(hot)
            return
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = WholeResponseWriter(self.transport, self.cycle)  # type: ignore[assignment]
        if self.cycle is not None and (self._shutting_down or self.limits.draining()):
            self.cycle.keep_alive = False  # answered with Connection: close
        self._body_pending = (
            self.cycle is not None and not self.cycle.response_complete and self._expects_body()
        )

    def _begin_hot(self, cycle: Any) -> None:
        """Start a hot-route cycle now, or queue it behind a pipelined request still being answered."""
        if self._shutting_down or self.limits.draining():
            cycle.keep_alive = False
        previous, self.cycle = self.cycle, cycle
        if previous is None or previous.response_complete:
            cycle.start()
        else:
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]  # a hot cycle has no ASGI app

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """Start the next pipelined request: a hot-route cycle (queued with no app) on the next loop step."""
        if app is None:
            self.loop.call_soon(cycle.start)  # not nested in the previous answer's call stack
        else:
            super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        """Parser callback: the request is fully received; the next bytes start the next request."""
        self._disarm()
        self._body_pending = False
        self._begun = False
        self._in_headers = True  # the next bytes on this connection are the next request's headers
        super().on_message_complete()

    def _expects_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"0", b"")
            if name == b"transfer-encoding":
                return True
        return False

    # ---------------------------------------------------------------------------------------- timeouts, refusals

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if not self._begun:
            self.transport.close()  # nothing sent: no one to answer
            return
        self._refuse(
            408,
            f"request headers not received within {self.limits.header_timeout_s} s (RESCOM_HEADER_TIMEOUT_S)",
        )

    def _body_timeout(self) -> None:
        self._timer = None
        cycle = self.cycle
        if (
            cycle is None or cycle.response_complete
        ):  # answered early (e.g. 401): the rest is not worth waiting for
            self._body_pending = False
            self.transport.close()
            return
        message = f"request body not received within {self.limits.body_timeout_s} s (RESCOM_BODY_TIMEOUT_S)"
        if not cycle.response_started:
            self._refuse(408, message)
        else:
            self.transport.close()
        cycle.disconnected = True  # the app's receive() now returns http.disconnect; its send() is a no-op
        cycle.message_event.set()

    def _refuse(self, status: int, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Answer ``status`` with a JSON error, stop reading and close the connection."""
        self._refused = True
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(error_bytes(status, message, extra))
            self.transport.close()

    # ---------------------------------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """Called when the listener closes: finish what the client started, close what is idle.

        A connection in the middle of a request (even one still sending its headers) is answered and then
        closed. One with no request yet (just accepted, or idle keep-alive) may still start one for
        ``IDLE_GRACE_S``: it can have been sent before the client learned that the server is stopping.
        """
        self._shutting_down = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
            return
        if self._begun:
            return  # headers arriving: on_headers_complete turns keep-alive off
        self._unset_keepalive_if_required()
        self._arm(IDLE_GRACE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._timer = None
        if not self._begun and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        """A response was sent; while shutting down, close the connection once nothing is pipelined."""
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, WholeResponseWriter):
            cycle.transport.flush()  # a HEAD answer has no body write to carry its head
        super().on_response_complete()
        if self._shutting_down and not self.transport.is_closing() and not self.pipeline:
            self.transport.close()


class WholeResponseWriter:
    """The transport as one request's response cycle sees it: the response head goes out with the first body write.

    uvicorn writes a response's status line and headers in one ``write`` and its body in the next. Two writes cost
    two system calls and two TCP segments, and a process killed between them leaves a client (or a load balancer)
    with a complete head and no body: an answer that has started cannot be retried elsewhere. Holding the head
    until the body's first bytes makes a small response one write, all or nothing. Anything written before the
    response starts (``100 Continue``) goes out at once; ``close`` and the response's completion
    (:meth:`LimitedHttpToolsProtocol.on_response_complete`) send a held head first. Every other attribute is the
    real transport's.

    Args:
        transport: the connection's transport.
        cycle: the request's response cycle (its ``response_started`` tells the head from what comes before).
    """

    __slots__ = ("_transport", "_cycle", "_head", "_head_seen")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes) -> None:
        """Hold the response head; send it with the next write."""
        if not self._head_seen and self._cycle.response_started:
            self._head_seen = True
            self._head = bytes(data)
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now (a response without body writes: ``HEAD``, or one that completed empty)."""
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        """Send a held head, then close."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _refusal_behind(exc: BaseException | None) -> _Refused | None:
    """Our refusal behind ``exc`` (httptools wraps a callback's exception in ``HttpParserCallbackError``)."""
    while exc is not None:
        if isinstance(exc, _Refused):
            return exc
        exc = exc.__context__ or exc.__cause__
    return None


def limited_protocol(limits: ConnectionLimits, hot_route: Any = None) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits (and a route it answers itself)."""
    attributes = {"limits": limits, "hot_route": hot_route}
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), attributes)
