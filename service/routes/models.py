"""``/v1/models``: what is served, and the adaptive prior of each model.

- ``GET /v1/models``: every model in the repository: served versions (``version`` is the default one, reached
  without ``?version=``), the version policy, provider, classes, input, accuracy (``accuracy``: the served
  figure, calibrated with a uniform prior, when recorded), Many/Few thresholds, T, label-shift divergence.
- ``GET /v1/models/{name}``: one of them.
- ``GET /v1/models/{name}/prior``: training prior, the adaptive EM estimate (recomputed if anything new was
  observed), ``kl_adaptive_train`` = KL(adaptive ‖ training prior) in nats, ``prediction_share`` per class
  (:mod:`service.label_shift`), window size and number of images seen.
- ``POST`` or ``DELETE /v1/models/{name}/prior/reset``: forget the window and the estimate.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from rescom.model_repository import metrics_summary
from service.auth import require_api_key
from service.errors import NotFound
from service.label_shift import label_shift
from service.registry import ServedModel
from service.responses import json_response
from service.state import ServiceState, get_state

__all__ = ["router"]

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_api_key)])


def _describe(state: ServiceState, name: str) -> dict[str, Any]:
    served: ServedModel | None = next((m for m in state.registry.served() if m.name == name), None)
    refused = state.registry.refused_versions(name)
    policy = state.registry.version_policy(name).describe()
    if served is None:
        return {
            "name": name,
            "ready": False,
            "version": None,
            "versions": [],
            "version_policy": policy,
            "refused_versions": refused,
        }
    spec, runtime = served.spec, served.runtime
    summary = metrics_summary(spec.metadata) or {}
    return {
        "name": name,
        "ready": not state.draining,
        "version": served.version,
        "versions": [m.version for m in state.registry.served_versions(name)],
        "version_policy": policy,
        "refused_versions": refused,
        "provider": served.provider,
        "platform": "onnxruntime_onnx",
        "input": {
            "name": spec.input.name,
            "datatype": spec.input.datatype,
            "shape": [-1, *spec.image_shape],
            "resize": spec.resize,
            "crop": spec.crop,
        },
        "num_classes": spec.num_classes,
        "class_names": list(spec.class_names),
        "class_counts": list(spec.class_counts),
        "temperature": spec.temperature,
        "class_bias": None if spec.class_bias is None else spec.class_bias.tolist(),
        "default_prior": spec.default_prior,
        "metrics": spec.metrics,
        "accuracy": {
            "top1": summary.get("headline"),
            "kind": summary.get("headline_kind"),
            "served": summary.get("served"),
            "raw": summary.get("raw"),
        },
        "shot_thresholds": summary.get("thresholds"),
        "promotion": spec.metadata.get("promotion"),
        "max_batch_size": runtime.max_batch_size,
        "batch_sizes": list(runtime.buckets),
        "instances": runtime.instances,
        "intra_op_threads": runtime.intra_op_threads,
        "queue_depth": served.batcher.queue_depth,
        "loaded_at": served.loaded_at,
        "method": spec.metadata.get("method"),
        "dataset": spec.metadata.get("dataset"),
        "architecture": spec.metadata.get("architecture"),
    }


@router.get("", summary="List models")
async def list_models(request: Request) -> Response:
    """Every model found in the repository, served or not."""
    state = get_state(request)
    return json_response({"models": [_describe(state, name) for name in state.registry.known()]})


@router.get("/{name}", summary="Describe a model")
async def describe_model(request: Request, name: str) -> Response:
    """One model (404 when the repository has no such model)."""
    state = get_state(request)
    if name not in state.registry.known():
        raise NotFound(f"unknown model {name!r}; models: {', '.join(state.registry.known()) or 'none'}")
    return json_response(_describe(state, name))


@router.get("/{name}/prior", summary="Adaptive prior state")
async def get_prior(request: Request, name: str) -> Response:
    """Training prior, adaptive estimate (up to date with everything observed), window and counts."""
    state = get_state(request)
    served = state.registry.get(name)
    adaptive = state.registry.adaptive(name)
    estimate = await adaptive.estimate(force=True)
    shift = await label_shift(adaptive, served.spec.train_prior)
    return json_response(
        {
            "model": name,
            "version": served.version,
            "class_names": list(served.spec.class_names),
            "train": served.spec.train_prior.tolist(),
            "adaptive": estimate.tolist(),
            "kl_adaptive_train": shift.kl,
            "prediction_share": shift.prediction_share.tolist(),
            "temperature": adaptive.temperature,
            **adaptive.snapshot(),
        }
    )


@router.post("/{name}/prior/reset", summary="Reset the adaptive prior")
@router.delete("/{name}/prior/reset", summary="Reset the adaptive prior")
async def reset_prior(request: Request, name: str) -> Response:
    """Forget the window and the estimate (e.g. after the deployment's traffic changed for good)."""
    state = get_state(request)
    adaptive = state.registry.adaptive(name)
    adaptive.reset()
    return json_response({"model": name, "reset": True, **adaptive.snapshot()})
