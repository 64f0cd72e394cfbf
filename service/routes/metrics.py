"""``GET /metrics``: Prometheus text format (behind the API key when one is set)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service.auth import require_api_key
from service.label_shift import label_shift
from service.metrics import CONTENT_TYPE_LATEST
from service.state import get_state

__all__ = ["router"]

router = APIRouter(tags=["operations"], dependencies=[Depends(require_api_key)])


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    """Request, batching, queue and model metrics (see :mod:`service.metrics`)."""
    state = get_state(request)
    state.metrics.ready.set(1 if state.ready else 0)
    for served in state.registry.served():
        shift = await label_shift(state.registry.adaptive(served.name), served.spec.train_prior)
        state.metrics.set_label_shift(
            served.name,
            served.spec.class_names,
            shift.kl,
            shift.prediction_share.tolist(),
            shift.window_images,
        )
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
