"""The application factory: ``create_app(settings) -> FastAPI``, and ``app`` for ``uvicorn service.main:app``.

The lifespan builds the shared state (metrics, model registry, decoding pool), starts loading the models in the
background (``/health/ready`` is 503 until they are loaded and warmed), and on shutdown marks the service as
draining, lets the batchers finish what is queued (``drain_timeout_s``) and closes everything.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from rescom import __version__
from service.config import Settings, get_settings
from service.error_handlers import install_error_handlers
from service.fastpath import PredictFastPath
from service.grpc_server import start_grpc_server, stop_grpc_server
from service.metrics import ServiceMetrics
from service.middleware import BodyLimitMiddleware, InternalErrorMiddleware, MetricsMiddleware
from service.registry import ModelRegistry
from service.routes import demo, docs, health, metrics, models, predict, triton, v2
from service.state import ServiceState

__all__ = ["create_app", "begin_drain", "configure_logging"]

log = logging.getLogger("rescom.service")

DESCRIPTION = """
Serves ResCom long-tailed image classifiers exported to ONNX, with server-side dynamic batching and per-request
prior calibration `p = softmax(z / T + b + log π)` (T, b: the export's fitted calibration).

* `POST /predict`: images as a raw body, multipart `file` fields or JSON base64; options `top_k`, `prior`
  (uniform | train | adaptive | JSON class -> weight), `temperature`, `model`, `version`.
* `/v2/...`: KServe Open Inference Protocol v2 (works with `tritonclient[http]` and KServe's
  `InferenceRESTClient`); the same over gRPC when `RESCOM_GRPC_PORT` is set; Triton's statistics and
  repository extensions.
* `/v1/models`, `/v1/models/{name}/prior`: what is served; the adaptive (EM) prior.
* `/health/live`, `/health/ready`, `/metrics`.
"""


def configure_logging(level: str) -> None:
    """Send the service's log lines to stderr unless the host application already configured logging."""
    logger = logging.getLogger("rescom")
    logger.setLevel(level.upper())
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def create_app(settings: Settings | None = None, *, fast_path: bool = True) -> FastAPI:
    """Build the FastAPI app.

    Args:
        settings: the service settings; ``None`` reads them from the environment (``RESCOM_*``) at startup.
        fast_path: serve raw-body ``POST /predict`` through :class:`service.fastpath.PredictFastPath`
            (same behaviour, less CPU); ``False`` sends every request through FastAPI.

    Returns:
        The app; models load when its lifespan starts.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings if settings is not None else get_settings()
        configure_logging(s.log_level)
        service_metrics = ServiceMetrics()
        registry = ModelRegistry(s, service_metrics)
        pool = ThreadPoolExecutor(s.resolved_decode_threads, thread_name_prefix="rescom-decode")
        state = ServiceState(s, service_metrics, registry, pool)
        app.state.rescom = state
        log.info(
            "rescom service %s: repository %s, max batch %s, queue delay %.1f ms, auth %s",
            __version__,
            s.model_repository,
            s.max_batch_size if "max_batch_size" in s.model_fields_set else "per model (config.pbtxt)",
            s.max_queue_delay_ms,
            "on" if s.api_key else "off",
        )
        grpc_server = None
        try:
            await registry.start()
            if s.grpc_port is not None:
                grpc_server, state.grpc_port = await start_grpc_server(state)
            yield
        finally:
            state.draining = True
            if grpc_server is not None:
                await stop_grpc_server(grpc_server, s.drain_timeout_s)
            log.info("shutting down: draining the model queues (at most %.1f s)", s.drain_timeout_s)
            await registry.close(s.drain_timeout_s)
            pool.shutdown(wait=False, cancel_futures=True)
            log.info("shutdown complete")

    app = FastAPI(
        title="ResCom inference service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from service.routes.docs, with assets that ship with the service
        redoc_url=None,
    )
    for module in (health, predict, triton, v2, models, metrics, demo, docs):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(MetricsMiddleware)  # outside the body limit: also counts its 413s
    app.add_middleware(InternalErrorMiddleware)  # a 500 is still counted by the metrics
    if fast_path:
        app.add_middleware(PredictFastPath)  # outermost: raw-body POST /predict skips the layers above
    return app


def begin_drain(app: FastAPI) -> None:
    """Mark the service as draining: readiness answers 503 from now on (called on SIGTERM)."""
    state = getattr(app.state, "rescom", None)
    if state is not None:
        state.draining = True


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    """``service.main.app``, built on first access so that importing this module reads no settings."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
