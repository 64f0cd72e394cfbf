"""Open Inference Protocol (KServe v2) operations, shared by the HTTP routes and the gRPC server.

Each function answers one protocol call from the service state; the transports only translate
(``service/routes/v2.py``, ``service/routes/health.py``, ``service/grpc_server.py``). :func:`infer` is the one
place where a v2 request reaches the model, through :mod:`service.inference` (the same path as ``/predict``):
logits ``z`` -> ``softmax(z / T + b + log π)`` with the request's prior and temperature.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from rescom import __version__
from service.errors import NotFound, ServiceError
from service.inference import infer_pixels, parse_calibration
from service.registry import ServedModel
from service.state import ServiceState
from service.v2_codec import (
    OUTPUTS,
    OutputTensor,
    V2Request,
    images_from,
    output_tensors,
    queue_timeout,
    requested_outputs,
)

__all__ = [
    "SERVER_NAME",
    "EXTENSIONS",
    "PLATFORM",
    "server_metadata",
    "not_ready_reason",
    "model_metadata",
    "model_config",
    "model_ready",
    "V2Result",
    "lease",
    "infer",
]

SERVER_NAME = "rescom"
EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "parameters",
    "statistics",
    "model_repository",
]
PLATFORM = "onnxruntime_onnx"


def server_metadata() -> dict[str, Any]:
    """``{"name", "version", "extensions"}`` (``$metadata_server_response``)."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def not_ready_reason(state: ServiceState) -> str | None:
    """Why the server is not ready (draining, still loading, nothing loaded), or ``None`` when it is."""
    if state.draining:
        return "shutting down"
    if not state.registry.initial_load_done:
        return "loading and warming up models"
    if not state.registry.ready:
        return "no model could be loaded; see the server log and GET /v1/models"
    return None


def model_metadata(state: ServiceState, name: str, version: str | None) -> dict[str, Any]:
    """``$metadata_model_response``: inputs and outputs with ``-1`` as the batch axis.

    Raises:
        NotFound / Unavailable / BadRequest: as :meth:`service.registry.ModelRegistry.get`.
    """
    served = state.registry.get(name, version)
    spec = served.spec
    c = spec.num_classes
    return {
        "name": served.name,
        "versions": [str(m.version) for m in state.registry.served_versions(served.name)],
        "platform": PLATFORM,
        "inputs": [{"name": spec.input.name, "datatype": "UINT8", "shape": [-1, *spec.image_shape]}],
        "outputs": [{"name": o, "datatype": "FP32", "shape": [-1, c]} for o in OUTPUTS],
    }


def model_config(state: ServiceState, name: str, version: str | None) -> dict[str, Any]:
    """The model as Triton's ``ModelConfig`` JSON (dims without the batch axis; ``max_batch_size`` > 0).

    Raises:
        NotFound / Unavailable / BadRequest: as :meth:`service.registry.ModelRegistry.get`.
    """
    served = state.registry.get(name, version)
    spec, runtime, s = served.spec, served.runtime, state.settings
    c = spec.num_classes
    return {
        "name": served.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": state.registry.version_policy(served.name).to_json(),
        "max_batch_size": runtime.max_batch_size,
        "input": [
            {
                "name": spec.input.name,
                "data_type": "TYPE_UINT8",
                "format": "FORMAT_NHWC",
                "dims": list(spec.image_shape),
            }
        ],
        "output": [
            {"name": o, "data_type": "TYPE_FP32", "dims": [c], "label_filename": "labels.txt"}
            for o in OUTPUTS
        ],
        "dynamic_batching": {
            "preferred_batch_size": list(runtime.buckets),
            "max_queue_delay_microseconds": int(s.max_queue_delay_ms * 1000),
            "default_queue_policy": {
                "max_queue_size": s.max_queue_size,
                "timeout_action": "REJECT",
                "default_timeout_microseconds": int(s.request_timeout_s * 1e6),
                "allow_timeout_override": True,
            },
        },
        "instance_group": [
            {
                "count": served.batcher.workers,
                "kind": "KIND_CPU" if served.provider == "CPUExecutionProvider" else "KIND_GPU",
            }
        ],
        "parameters": {
            "provider": {"string_value": served.provider},
            "intra_op_thread_count": {"string_value": str(runtime.intra_op_threads)},
            "temperature": {"string_value": repr(spec.fitted_temperature)},
            "default_prior": {"string_value": spec.default_prior},
            "class_names": {"string_value": json.dumps(list(spec.class_names))},
            "class_counts": {"string_value": json.dumps(list(spec.class_counts))},
            "resize": {"string_value": str(spec.resize)},
            "crop": {"string_value": str(spec.crop)},
        },
    }


def model_ready(state: ServiceState, name: str, version: str | None) -> str | None:
    """Why the model (version) cannot take requests now, or ``None`` when it is ready.

    Raises:
        NotFound: unknown model or version (the caller answers 404 / ``NOT_FOUND``).
    """
    try:
        state.registry.get(name, version)
    except NotFound:
        raise
    except ServiceError as err:
        return err.message
    if state.draining:
        return "the server is shutting down"
    return None


@dataclass
class V2Result:
    """The model version that answered and the output tensors."""

    served: ServedModel
    outputs: list[OutputTensor]


def lease(state: ServiceState, name: str, version: str | None) -> AbstractContextManager[ServedModel]:
    """Hold the model version that answers an inference request until it is answered.

    ``version=None``: the registry's choice. Take it before reading the request body
    (:meth:`service.registry.ModelRegistry.lease`).

    Raises:
        NotFound / Unavailable / BadRequest: as :meth:`service.registry.ModelRegistry.get`.
    """
    return state.registry.lease(name, version)


async def infer(
    state: ServiceState, served: ServedModel, request: V2Request, default_binary: bool
) -> V2Result:
    """Run one v2 inference request through the model's batcher and the calibration.

    Args:
        state: the service state.
        served: the model version held by :func:`lease`; it answers the whole request.
        request: the decoded request.
        default_binary: encode outputs as raw bytes unless an output says otherwise.

    Raises:
        ServiceError: any client error (400/404/413) or an overload / deadline (503/504).
    """
    started = time.perf_counter_ns()
    ok = False
    try:
        images = images_from(request, served, state.settings.max_images_per_request)  # [n, H, W, 3]
        wanted = requested_outputs(request, default_binary)
        timeout = queue_timeout(request.parameters, state.settings.request_timeout_s)
        params = request.parameters
        calibration = None
        if any(w.name == "probabilities" for w in wanted):
            calibration = parse_calibration(state, served, params.get("prior"), params.get("temperature"))
        logits, probs = await infer_pixels(state, served, images, calibration=calibration, timeout_s=timeout)
        tensors = {"logits": logits}  # [n, C] float32
        if probs is not None:
            tensors["probabilities"] = probs.astype(np.float32)  # [n, C]
        result = V2Result(served, output_tensors(wanted, tensors, served.spec.class_names))
        ok = True
        return result
    finally:
        state.request_stats.record(served.name, served.version, started, ok)
