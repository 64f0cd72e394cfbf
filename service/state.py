"""What the routes share: settings, metrics, the model registry, the decoding pool, the drain flag."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from starlette.requests import Request

from service.config import Settings
from service.errors import Unavailable
from service.metrics import ServiceMetrics
from service.registry import ModelRegistry
from service.triton_stats import RequestStats

__all__ = ["ServiceState", "get_state"]


@dataclass
class ServiceState:
    """Per-app state, created in the app's lifespan and stored as ``app.state.rescom``.

    Attributes:
        settings: the validated settings.
        metrics: the app's Prometheus registry.
        registry: the served models.
        decode_pool: threads that decode and preprocess images off the event loop.
        draining: set on SIGTERM / shutdown; readiness then answers 503.
        grpc_port: the port the KServe v2 gRPC server listens on (``None``: gRPC is off).
        request_stats: v2 request outcomes for Triton's statistics extension.
    """

    settings: Settings
    metrics: ServiceMetrics
    registry: ModelRegistry
    decode_pool: ThreadPoolExecutor
    draining: bool = False
    grpc_port: int | None = None
    request_stats: RequestStats = field(default_factory=RequestStats)

    @property
    def ready(self) -> bool:
        """Models loaded and warmed, and not shutting down."""
        return self.registry.ready and not self.draining


def get_state(request: Request) -> ServiceState:
    """The app's :class:`ServiceState` (503 before startup has finished)."""
    state = getattr(request.app.state, "rescom", None)
    if state is None:
        raise Unavailable("the service is starting")
    return state
