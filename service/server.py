"""The HTTP server around the app: uvicorn with the connection limits and a shutdown that loses nothing.

uvicorn (uvloop + httptools) with :mod:`service.protocol`'s limits, and a shutdown that loses no request that
reached the socket.

Shutdown, on SIGTERM (``docker stop``, Kubernetes) or SIGINT (Ctrl-C):

1. readiness (``/health/ready``, ``/v2/health/ready``) answers 503 at once;
2. on SIGTERM only, everything else is served for ``shutdown_delay_s`` (default 5 s: what a load balancer
   needs to see the endpoint go and stop routing here), every response now with ``Connection: close`` so that
   keep-alive clients reconnect elsewhere;
3. connections already waiting in the kernel's accept queue are accepted, then the listener closes (new
   connections are refused at the TCP level); requests in progress, including those whose headers or body are
   still arriving, are read and answered; connections without a request get ``IDLE_GRACE_S`` to send one; at
   most ``drain_timeout_s`` in all, after which requests still running get a 503 with ``Retry-After``
   (:class:`service.errors.ShuttingDown`) instead of being dropped;
4. the batchers and sessions close and the process exits (re-raising the signal, so the exit status is 143 on
   SIGTERM; as PID 1 in a container, where the kernel ignores a signal left to its default action, it is 0).
   A second signal skips what is left of the delay.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.config import Settings
from service.fastpath import PredictFastPath
from service.hotpath import PredictRoute
from service.main import begin_drain
from service.protocol import ConnectionLimits, limited_protocol

__all__ = ["DrainingServer", "server_config", "connection_limits"]

log = logging.getLogger("rescom.service")


def connection_limits(settings: Settings, app: FastAPI | None = None) -> ConnectionLimits:
    """The per-connection limits of ``settings``; ``app``'s state decides when responses stop keeping alive."""

    def draining() -> bool:
        state = getattr(getattr(app, "state", None), "rescom", None)
        return bool(state is not None and state.draining)

    return ConnectionLimits(
        max_request_line_bytes=settings.max_request_line_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections,
        draining=draining,
    )


def server_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    """The ``uvicorn.Config`` of ``app``: the fast path outermost, the limited protocol, the timeouts."""
    return uvicorn.Config(
        PredictFastPath(app, app),  # outermost: raw-body POST /predict skips FastAPI's own middleware too
        host=settings.host,
        port=settings.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=limited_protocol(
            connection_limits(settings, app), PredictRoute(app) if settings.protocol_fast_path else None
        ),
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        backlog=2048,
        lifespan="on",
        server_header=False,
        ws="none",  # no WebSocket routes: an upgrade request is answered by the app like any other request
    )


class DrainingServer(uvicorn.Server):
    """The server of uvicorn, with readiness off at the first signal and a delayed, lossless shutdown.

    The first signal flips readiness to 503 at once; on SIGTERM the graceful shutdown starts only
    ``shutdown_delay_s`` later, and the accept queue is emptied before the listener closes.

    Args:
        config: uvicorn's configuration (:func:`server_config`).
        app: the FastAPI app whose readiness the first signal turns off.
        shutdown_delay_s: seconds between SIGTERM and the start of the graceful shutdown
            (RESCOM_SHUTDOWN_DELAY_S).
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, shutdown_delay_s: float = 0.0) -> None:
        super().__init__(config)
        self._rescom_app = app
        self._shutdown_delay_s = shutdown_delay_s
        self._close_at: float | None = None  # monotonic time at which the delayed shutdown may start
        self._announced = False
        self._handoffs: set[asyncio.Task[object]] = set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: readiness off at once; on the first SIGTERM the shutdown waits ``shutdown_delay_s``."""
        first = not self.should_exit
        begin_drain(self._rescom_app)
        if first and sig == signal.SIGTERM and self._shutdown_delay_s > 0:
            self._close_at = time.monotonic() + self._shutdown_delay_s
        else:
            self._close_at = None  # SIGINT, or a second signal: no (more) delay
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """Uvicorn's check every 0.1 s; holds the shutdown back until the delay has passed."""
        should_exit = await super().on_tick(counter)
        if not should_exit or self.force_exit:
            return should_exit
        close_at = self._close_at
        if close_at is not None and time.monotonic() < close_at:
            if not self._announced:  # logged here, not in the signal handler
                self._announced = True
                log.info(
                    "SIGTERM: readiness is 503; still serving for %.1f s (RESCOM_SHUTDOWN_DELAY_S), then draining",
                    close_at - time.monotonic(),
                )
            return False
        return True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Accept what the kernel already accepted for us, then uvicorn's shutdown (listener closed, drain)."""
        self._accept_backlog()
        await super().shutdown(sockets)

    def _accept_backlog(self) -> None:
        """Hand every connection waiting in the listeners' accept queues to the protocol, synchronously.

        No await between the last accept and the listener closing, so nothing can slip in between and be reset.
        """
        loop = asyncio.get_running_loop()
        # Typed as asyncio.Protocol, but uvicorn's protocol classes take these keyword arguments.
        protocol_class: Any = self.config.http_protocol_class
        factory = functools.partial(
            protocol_class,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        accepted = 0
        for server in getattr(self, "servers", []):
            for listener in server.sockets or ():
                try:
                    sock = socket.socket(fileno=os.dup(listener.fileno()))
                except OSError:
                    continue
                sock.setblocking(False)
                try:
                    while True:
                        try:
                            conn, _ = sock.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            break
                        conn.setblocking(False)
                        task = loop.create_task(loop.connect_accepted_socket(factory, conn))
                        self._handoffs.add(task)
                        task.add_done_callback(self._handoffs.discard)
                        accepted += 1
                finally:
                    os.close(
                        sock.detach()
                    )  # the duplicate only: the listener stays open until uvicorn closes it
        if accepted:
            log.info("accepted %d queued connection(s) before closing the listener", accepted)
