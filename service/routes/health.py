"""Health probes (always open, also when an API key is set).

- ``GET /health/live``: the process answers (200, also while draining).
- ``GET /health/ready``: 200 once every model found at startup has been tried, at least one is loaded and warmed,
  and the server is not draining; 503 otherwise.
- ``GET /v2/health/live`` / ``GET /v2/health/ready``: the same with empty bodies, as Triton does.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.responses import error_response, json_response
from service.state import ServiceState, get_state

__all__ = ["router"]

router = APIRouter(tags=["health"])


def _not_ready_reason(state: ServiceState) -> str | None:
    if state.draining:
        return "shutting down"
    if not state.registry.initial_load_done:
        return "loading and warming up models"
    if not state.registry.ready:
        return "no model could be loaded; see the server log and GET /v1/models"
    return None


@router.get("/health/live", summary="Liveness")
async def live() -> Response:
    """200 while the process runs."""
    return json_response({"status": "live"})


@router.get("/health/ready", summary="Readiness", responses={503: {"description": "not ready"}})
async def ready(request: Request) -> Response:
    """200 when models are loaded and warmed and the server is not draining; 503 otherwise."""
    state = get_state(request)
    reason = _not_ready_reason(state)
    if reason is not None:
        return error_response(503, f"not ready: {reason}")
    models = {m.name: {"version": m.version, "provider": m.provider} for m in state.registry.served()}
    return json_response({"status": "ready", "models": models})


@router.get("/v2/health/live", summary="Liveness (KServe v2)")
async def v2_live() -> Response:
    """200 with an empty body."""
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="Readiness (KServe v2)")
async def v2_ready(request: Request) -> Response:
    """200 or 503, empty body."""
    return Response(status_code=200 if _not_ready_reason(get_state(request)) is None else 503)
