"""Triton's statistics and model repository extensions, as ``tritonclient`` and Triton dashboards call them.

- ``GET /v2/models/stats``, ``/v2/models/{name}/stats``, ``/v2/models/{name}/versions/{v}/stats``:
  ``{"model_stats": [...]}`` (:mod:`service.triton_stats`; ``get_inference_statistics``).
- ``POST /v2/repository/index`` (body optional, ``{"ready": true}`` lists only ready versions): every version
  folder of every model, ``{"name", "version", "state": "READY" | "UNAVAILABLE", "reason"}``
  (``get_model_repository_index``). Read-only.
- ``POST /v2/repository/models/{name}/load`` / ``.../unload`` (``load_model`` / ``unload_model``): refused
  (400, as Triton refuses them outside its explicit model control mode) unless ``RESCOM_ALLOW_MODEL_CONTROL=true`` **and** an API key is set; unload drains the model's queue
  and keeps it unloaded (polling leaves it alone) until a load.

All need the API key when one is set, like the rest of ``/v2``.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service.auth import require_api_key
from service.errors import BadRequest
from service.responses import json_response
from service.state import get_state
from service.triton_repository import check_model_control, repository_index
from service.triton_stats import model_statistics

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["triton-extensions"], dependencies=[Depends(require_api_key)])


@router.get("/models/stats", summary="Statistics of every served model (Triton)")
@router.get("/models/{name}/stats", summary="Statistics of one model (Triton)")
@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of one model version (Triton)")
async def statistics(request: Request, name: str | None = None, version: str | None = None) -> Response:
    """``{"model_stats": [...]}`` for the served version of each model (or of the one named)."""
    state = get_state(request)
    served = [state.registry.get(name, version)] if name else state.registry.served()
    stats = [model_statistics(m, state.request_stats, state.metrics.registry) for m in served]
    return json_response({"model_stats": stats})


@router.post("/repository/index", summary="Model repository index (Triton)")
async def index(request: Request) -> Response:
    """Every version folder of every model with its state; ``{"ready": true}`` keeps only the ready ones."""
    state = get_state(request)
    ready_only = _ready_flag(await request.body())
    return json_response(await repository_index(state, ready_only))


@router.post("/repository/models/{name}/load", summary="Load a model (Triton; needs model control)")
async def load(request: Request, name: str) -> Response:
    """Serve the newest loadable version of ``name`` (again); 200 with an empty body, as Triton answers."""
    state = get_state(request)
    check_model_control(state)
    await state.registry.load(name)
    return Response(status_code=200)


@router.post("/repository/models/{name}/unload", summary="Unload a model (Triton; needs model control)")
async def unload(request: Request, name: str) -> Response:
    """Stop serving ``name``; what is queued for it still finishes."""
    state = get_state(request)
    check_model_control(state)
    await state.registry.unload(name)
    return Response(status_code=200)


def _ready_flag(body: bytes) -> bool:
    if not body.strip():
        return False
    try:
        req = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest('the repository index request must be JSON, e.g. {} or {"ready": true}') from None
    ready = req.get("ready", False) if isinstance(req, dict) else None
    if not isinstance(ready, bool):
        raise BadRequest('"ready" must be true or false')
    return ready
