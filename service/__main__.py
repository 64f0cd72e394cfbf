"""``python -m service --model-repository models [--model NAME] [--host 127.0.0.1] [--port 8000]``.

Every other option comes from ``RESCOM_*`` environment variables (:class:`service.config.Settings`). Runs one
uvicorn process (batching needs all requests in one process; scale out with replicas). On SIGTERM/SIGINT the
service reports not-ready at once, stops accepting connections, finishes in-flight requests for at most
``drain_timeout_s`` and exits.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
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


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, but the first signal also flips readiness to 503 before the graceful shutdown."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._rescom_app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:  # noqa: D102
        begin_drain(self._rescom_app)
        super().handle_exit(sig, frame)


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
    server = _DrainingServer(config, app)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
