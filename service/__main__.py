"""``python -m service --model-repository models [--model NAME] [--host 127.0.0.1] [--port 8000]``.

Every other option comes from ``RESCOM_*`` environment variables (:class:`service.config.Settings`). Runs one
uvicorn process (batching needs all requests in one process; scale out with replicas).

Shutdown, on SIGTERM (``docker stop``, Kubernetes) or SIGINT (Ctrl-C):

1. readiness (``/health/ready``, ``/v2/health/ready``) answers 503 at once;
2. on SIGTERM only, the server keeps serving everything else for ``shutdown_delay_s`` (default 0), so that load
   balancers see the 503 and stop routing here before the port closes;
3. the listener closes (new connections are refused), idle keep-alive connections are closed, and requests
   already received run to completion for at most ``drain_timeout_s``; any still running then get a 503 with
   ``Retry-After`` (:class:`service.errors.ShuttingDown`) instead of being dropped;
4. the batchers and sessions close and the process exits (re-raising the signal, so the exit status is 143 on
   SIGTERM). A second signal skips what is left of the delay.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from service.config import Settings
from service.fastpath import PredictFastPath
from service.main import begin_drain, configure_logging, create_app

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (each overrides its ``RESCOM_*`` variable)."""
    p = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__.split("\n\n")[0],
        epilog="Other settings: RESCOM_* environment variables (see the README).",
    )
    p.add_argument("--model-repository", help="Triton-style model repository (RESCOM_MODEL_REPOSITORY)")
    p.add_argument("--model", help="serve only this model (RESCOM_MODEL)")
    p.add_argument("--host", help="bind address, default 127.0.0.1 (RESCOM_HOST)")
    p.add_argument("--port", type=int, help="port, default 8000 (RESCOM_PORT)")
    p.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], help="RESCOM_LOG_LEVEL"
    )
    return p.parse_args(argv)


log = logging.getLogger("rescom.service")


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, but the first signal flips readiness to 503 at once, and on SIGTERM the graceful shutdown
    (listener closed, in-flight requests drained) starts only ``shutdown_delay_s`` later."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, shutdown_delay_s: float = 0.0) -> None:
        super().__init__(config)
        self._rescom_app = app
        self._shutdown_delay_s = shutdown_delay_s
        self._close_at: float | None = None  # monotonic time at which the delayed shutdown may start
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:  # noqa: D102
        first = not self.should_exit
        begin_drain(self._rescom_app)
        if first and sig == signal.SIGTERM and self._shutdown_delay_s > 0:
            self._close_at = time.monotonic() + self._shutdown_delay_s
        else:
            self._close_at = None  # SIGINT, or a second signal: no (more) delay
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's check every 0.1 s; holds the shutdown back until the delay has passed."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """Validate the settings, then run the server until it is stopped."""
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in err.errors()]
        print("invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    app = create_app(settings, fast_path=False)
    config = uvicorn.Config(
        PredictFastPath(app, app),  # outermost: raw-body POST /predict skips FastAPI's own middleware too
        host=settings.host,
        port=settings.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
        timeout_keep_alive=30,
        backlog=2048,
        lifespan="on",
        server_header=False,
    )
    server = _DrainingServer(config, app, settings.shutdown_delay_s)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
