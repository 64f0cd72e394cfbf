"""``POST /predict`` with a raw image body, answered from the HTTP parser's callbacks: no ASGI cycle, no task.

:class:`service.fastpath.PredictFastPath` already skips FastAPI for this one request shape, but every request
still passes through uvicorn's ASGI cycle: a task, a coroutine chain, ``receive``/``send`` messages and a
header pass per response. Under load that machinery costs as much CPU on the event loop as decoding the image.
Here the connection protocol (:class:`service.protocol.LimitedHttpToolsProtocol`) hands the request, once its
headers are parsed, to a :class:`PredictCycle` that plays the part of uvicorn's cycle for the protocol (body,
``more_body``, ``keep_alive``, ``response_complete``, ...): pipelining, keep-alive, the connection limits, the
timeouts and the shutdown steps stay the protocol's. The cycle then runs the request as callbacks:

1. when it is the connection's turn: auth, query options, model lease, ``Content-Length`` against the body limit
   (the same checks, order and errors as the ASGI fast path and the FastAPI route);
2. once the body is in: the header checks of the image, decode on the event loop, :meth:`submit_nowait` to the
   model's batcher;
3. when the model call is done: calibration and top-k shared by the call (:func:`rank_rows_now`), the JSON
   document, one write.

A request that has to wait for something else (an image too large to decode on the event loop, the adaptive
prior's estimate) continues as a task through :func:`service.inference.predict_encoded`, the same function the
other paths use. Only ``POST /predict`` with ``Content-Type: image/*``, ``application/octet-stream`` or none,
no ``Transfer-Encoding`` and no ``Expect`` comes here; everything else goes through the ASGI app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httptools

from service.batcher import BatchRows
from service.errors import BadRequest, ServiceError, ShuttingDown
from service.fastpath import ROUTE, PredictCounters, admit_raw, error_answer
from service.inference import (
    decode_inline,
    open_request_images,
    parse_predict_options,
    predict_encoded,
    predict_response,
    rank_rows_now,
)
from service.protocol import json_response
from service.registry import ServedModel
from service.responses import dumps
from service.routes.predict import EMPTY_BODY, is_raw_image
from service.state import ServiceState

__all__ = ["PredictRoute", "PredictCycle"]

log = logging.getLogger("rescom.service")
_ROUTE_BYTES = ROUTE.encode()


class PredictRoute:
    """Decides, per request, whether the protocol answers it with a :class:`PredictCycle`.

    Args:
        app: the FastAPI app whose ``state.rescom`` serves the requests (set by its lifespan).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counters = PredictCounters()

    def cycle_for(self, protocol: Any) -> PredictCycle | None:
        """A cycle for the request whose headers ``protocol`` just parsed, or ``None`` (the ASGI app answers)."""
        parser = protocol.parser
        if parser.get_method() != b"POST" or parser.should_upgrade():
            return None
        url = httptools.parse_url(protocol.url)
        if url.path != _ROUTE_BYTES:
            return None
        state = getattr(self.app.state, "rescom", None)
        if state is None:
            return None
        content_type = content_length = None
        for name, value in protocol.headers:  # names already lower-case
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
            elif name in (b"transfer-encoding", b"expect"):
                return None
        if content_type is not None and not is_raw_image(content_type.decode("latin-1")):
            return None
        version = parser.get_http_version()
        keep_alive = version != "1.0" and parser.should_keep_alive()
        return PredictCycle(protocol, self, state, url.query or b"", content_length, version, keep_alive)


class _BodyEvents:
    """The cycle's ``message_event``: uvicorn's protocol sets it after body bytes, the body's end or a disconnect.

    Here ``set()`` steps the cycle on instead of waking a task.
    """

    __slots__ = ("_cycle",)

    def __init__(self, cycle: PredictCycle) -> None:
        self._cycle = cycle

    def set(self) -> None:
        """Step the cycle on."""
        self._cycle.body_event()

    def clear(self) -> None:
        """Nothing to clear: the cycle looks at its own state."""


class PredictCycle:
    """One raw-body ``POST /predict``, with the attributes the protocol expects of uvicorn's request cycle.

    Args:
        protocol: the connection's protocol.
        route: the route (metric children shared by its cycles).
        state: the service state.
        query: the raw query string.
        content_length: the ``Content-Length`` header, if any.
        http_version: ``1.1`` or ``1.0`` (for the access log).
        keep_alive: whether the connection stays open after the response.
    """

    def __init__(
        self,
        protocol: Any,
        route: PredictRoute,
        state: ServiceState,
        query: bytes,
        content_length: bytes | None,
        http_version: str,
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.route = route
        self.state = state
        self.query = query
        self.content_length = content_length
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.headers = protocol.headers  # this request's list (the protocol starts a new one per request)
        # the request-cycle attributes uvicorn's protocol reads and writes
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.message_event = _BodyEvents(self)
        self._started = 0.0  # perf_counter at the start of the turn; 0 until then
        self._served: ServedModel | None = None
        self._options: dict[str, Any] = {}
        self._submitted = False
        self._future: asyncio.Future[BatchRows] | None = None
        self._stats_started = 0  # perf_counter_ns when the request reached admission; 0 when not (yet)

    # ------------------------------------------------------------------------------------------ steps

    def start(self) -> None:
        """The connection's turn: the checks that need no body, then wait for the body (or go on)."""
        self._started = time.perf_counter()
        try:
            self._served, self._options = admit_raw(self.state, self.headers, self.query, self.content_length)
        except ServiceError as err:
            self.reply(*error_answer(err))
            return
        except Exception:
            self._fail()
            return
        self.protocol.flow.resume_reading()  # uvicorn pauses reading while a body waits for its turn
        self.body_event()

    def body_event(self) -> None:
        """Body bytes arrived, the body ended, or the client went away."""
        if self.response_complete or not self._started or self._submitted:
            return
        if self.disconnected:
            self._finish()  # no one to answer
            return
        if self.more_body:
            self.protocol.flow.resume_reading()
            return
        self._submitted = True
        try:
            self._predict(bytes(self.body))
        except Exception as err:
            self._failed(err)

    def _predict(self, body: bytes) -> None:
        """Decode and queue the image, or hand the request to a task when a step has to wait."""
        if not body:
            raise BadRequest(EMPTY_BODY)
        state, served = self.state, self._served
        assert served is not None
        settings = state.settings
        options = self._options
        k, calibration = parse_predict_options(
            state, served, 1, options["top_k"], options["prior"], options["temperature"]
        )
        if calibration.prior.kind == "adaptive":  # π_t is estimated asynchronously
            self._continue_in_task(body)
            return
        self._stats_started = time.perf_counter_ns()  # Triton's statistics: admission, decode and model call
        served.batcher.check_room(1)
        opened = open_request_images(state, served, [body])
        x = decode_inline(served, opened)
        if x is None:  # a large image goes to the decoding pool
            for o in opened:
                o.image.close()
            self._stats_started = 0  # predict_encoded records the request itself
            self._continue_in_task(body)
            return
        self._future = served.batcher.submit_nowait(x, settings.request_timeout_s)  # x: [1, crop, crop, 3]
        self._future.add_done_callback(lambda done: self._answer(done, k, calibration))
        self.protocol.tasks.add(self)  # the server's drain waits for it, and cancels it when time runs out

    def cancel(self, msg: str | None = None) -> None:
        """The graceful shutdown's drain timeout ran out (the server cancels its tasks): answer 503 now."""
        if self.response_complete:
            return
        log.warning("POST %s cancelled by the shutdown; answered 503", ROUTE)
        if self._future is not None:
            self._future.cancel()  # a queued image is skipped; a running batch ends unheeded

    def _answer(self, done: asyncio.Future[BatchRows], k: int, calibration: Any) -> None:
        """The model call is done: calibrate, rank and answer (the statistics are counted before the lease ends)."""
        served = self._served
        assert served is not None
        try:
            if done.cancelled():
                raise ShuttingDown()
            answer = done.result()
            ranked = rank_rows_now(served, answer, calibration)  # [1, C]
            self.state.registry.adaptive(served.name).observe(answer.rows)
            payload = dumps(predict_response(served, ranked, k, calibration))
        except Exception as err:
            self._failed(err)
        else:
            self._record_stats(ok=True)
            self.reply(200, payload, {})

    def _failed(self, err: Exception) -> None:
        """A request past its admission failed: count it, then answer its error (a bug: 500, logged)."""
        self._record_stats(ok=False)
        if isinstance(err, ServiceError):
            self.reply(*error_answer(err))
        else:
            self._fail()

    def _record_stats(self, ok: bool) -> None:
        """Count the request in Triton's statistics (once; not for requests that never reached admission)."""
        served, started = self._served, self._stats_started
        if served is not None and started:
            self._stats_started = 0
            self.state.request_stats.record(served.name, served.version, started, ok)

    def _continue_in_task(self, body: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._predict_async(body))
        tasks = self.protocol.tasks  # the server waits for these at shutdown and cancels them after the drain
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _predict_async(self, body: bytes) -> None:
        served = self._served
        assert served is not None
        try:
            document = await predict_encoded(self.state, served, [body], **self._options)
        except ServiceError as err:
            self.reply(*error_answer(err))
        except asyncio.CancelledError:  # still running when the graceful shutdown's drain timeout ran out
            log.warning("POST %s cancelled by the shutdown; answered 503", ROUTE)
            self.reply(*error_answer(ShuttingDown()))
        except Exception:
            self._fail()
        else:
            self.reply(200, dumps(document), {})

    # ------------------------------------------------------------------------------------------ answer

    def _fail(self) -> None:
        log.exception("unhandled error in POST %s", ROUTE)
        self.reply(500, dumps({"error": "internal error"}), {})

    def reply(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        """Write the whole response in one write, count it, end the lease, let the next pipelined request go."""
        if self.response_complete:
            return
        self.response_started = self.response_complete = True
        self._finish()
        self.route.counters.record(self.state.metrics, status, time.perf_counter() - self._started)
        protocol = self.protocol
        if self.disconnected or self.transport.is_closing():
            return
        if self.state.draining:
            self.keep_alive = False  # a load balancer is taking this replica out: reconnect elsewhere
        extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        head = [*protocol.server_state.default_headers, *extra]
        self.transport.write(json_response(status, payload, head, close=not self.keep_alive))
        if protocol.access_log:
            client = f"{protocol.client[0]}:{protocol.client[1]}" if protocol.client else ""
            path = ROUTE + ("?" + self.query.decode("latin-1") if self.query else "")
            protocol.access_logger.info('%s - "POST %s HTTP/%s" %d', client, path, self.http_version, status)
        if not self.keep_alive:
            self.transport.close()
        protocol.on_response_complete()

    def _finish(self) -> None:
        """End the model lease (once); the server no longer waits for this request."""
        self.protocol.tasks.discard(self)
        served, self._served = self._served, None
        if served is not None:
            self.state.registry.release(served)
