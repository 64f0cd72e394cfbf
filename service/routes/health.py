"""Health probes (always open, also when an API key is set).

- ``GET /health/live``: the process answers (200, also while draining).
- ``GET /health/ready``: 200 once every model found at startup has been tried, at least one is loaded and warmed,
  and the server is not draining; 503 otherwise.
- ``GET /v2/health/live`` / ``GET /v2/health/ready``: the same as the Open Inference Protocol's bodies
  ``{"live": true}`` and ``{"ready": true|false}`` (503 with ``{"ready": false}`` while not ready, so a Kubernetes
  probe and KServe's ``InferenceRESTClient`` read the same thing).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.responses import error_response, json_response
from service.state import get_state
from service.v2_protocol import not_ready_reason

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="Liveness")
async def live() -> Response:
    """200 while the process runs."""
    return json_response({"status": "live"})


@router.get("/health/ready", summary="Readiness", responses={503: {"description": "not ready"}})
async def ready(request: Request) -> Response:
    """200 when models are loaded and warmed and the server is not draining; 503 otherwise."""
    state = get_state(request)
    reason = not_ready_reason(state)
    if reason is not None:
        return error_response(503, f"not ready: {reason}")
    models = {m.name: {"version": m.version, "provider": m.provider} for m in state.registry.served()}
    return json_response({"status": "ready", "models": models})


@router.get("/v2/health/live", summary="Liveness (KServe v2)")
async def v2_live() -> Response:
    """200 ``{"live": true}`` while the process runs."""
    return json_response({"live": True})


@router.get(
    "/v2/health/ready", summary="Readiness (KServe v2)", responses={503: {"description": '{"ready": false}'}}
)
async def v2_ready(request: Request) -> Response:
    """200 ``{"ready": true}``, or 503 ``{"ready": false}`` while loading, without a model, or draining."""
    ready = not_ready_reason(get_state(request)) is None
    return json_response({"ready": ready}, 200 if ready else 503)
