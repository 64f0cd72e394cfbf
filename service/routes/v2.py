"""KServe Open Inference Protocol v2 (REST) with Triton's binary-tensor and classification extensions.

Enough of it for the stock ``tritonclient[http]`` client and KServe's ``InferenceRESTClient`` (docs/protocols.md).
The route only translates HTTP: decoding and encoding are :mod:`service.v2_codec`'s, the calls themselves
:mod:`service.v2_protocol`'s, shared with the gRPC server (``service/grpc_server.py``).

- ``GET /v2``; ``GET /v2/models/{name}[/versions/{v}]`` (metadata), ``.../ready`` (``{"name", "ready"}``),
  ``.../config`` (Triton JSON).
- ``POST /v2/models/{name}[/versions/{v}]/infer``: the body is read raw (the client sends no Content-Type).
  Input ``images`` ``UINT8 [n, H, W, 3]``, already preprocessed (decoded, resized, centre-cropped), as JSON
  ``data`` or as binary data after the JSON header (``Inference-Header-Content-Length``). It goes straight to the
  batcher. ``Content-Encoding: gzip|deflate`` bodies are accepted.
- Outputs: ``logits`` ``FP32 [n, C]`` (raw, ``softmax(z)`` is the posterior under a uniform prior) and
  ``probabilities`` ``FP32 [n, C]`` = ``softmax(z / T + b + log π)`` (``b``: the model's per-class bias, 0
  when it has none), where the request-level ``parameters`` ``prior`` (``uniform`` | ``train`` | ``adaptive`` |
  JSON object/list) and ``temperature`` (``true`` = fitted T and b, ``false`` = raw logits, or a number) choose
  ``π``, ``T`` and ``b`` as in ``/predict``. Without ``outputs`` both are returned.
  Either can be returned as ``classification: k`` (``BYTES [n, k]``, ``"value:index:label"``). Binary outputs
  follow ``binary_data`` per output or ``binary_data_output`` for the request.
- ``parameters.timeout`` (µs) shortens the queue deadline; ``parameters.priority`` is accepted and ignored.
- Errors: ``{"error": "..."}`` with 400 / 401 / 404 / 413 / 503 / 504.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service import v2_protocol
from service.auth import require_api_key
from service.errors import NotFound
from service.responses import dumps, json_response
from service.state import get_state
from service.v2_codec import decompress, json_output, parse_json_request, split_binary

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["kserve-v2"], dependencies=[Depends(require_api_key)])


@router.get("", summary="Server metadata")
@router.get("/", summary="Server metadata", include_in_schema=False)
async def server_metadata() -> Response:
    """``{"name", "version", "extensions"}``."""
    return json_response(v2_protocol.server_metadata())


@router.get("/models/{name}", summary="Model metadata")
@router.get("/models/{name}/versions/{version}", summary="Model metadata (version)")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Inputs and outputs with ``-1`` as the batch axis."""
    return json_response(v2_protocol.model_metadata(get_state(request), name, version))


@router.get("/models/{name}/ready", summary="Model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (version)")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """Whether one model (version) is ready to serve.

    200 ``{"name", "ready": true}`` when the model (version) is served; 404 when unknown; 400 with
    ``{"name", "ready": false, "error"}`` while it is not loaded or the server drains.
    """
    try:
        reason = v2_protocol.model_ready(get_state(request), name, version)
    except NotFound:
        raise
    if reason is not None:
        return json_response({"name": name, "ready": False, "error": reason}, 400)
    return json_response({"name": name, "ready": True})


@router.get("/models/{name}/config", summary="Model configuration (Triton JSON)")
@router.get("/models/{name}/versions/{version}/config", summary="Model configuration (version)")
async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    """The model as a Triton ``ModelConfig`` (dims without the batch axis; ``max_batch_size`` > 0)."""
    return json_response(v2_protocol.model_config(get_state(request), name, version))


@router.post("/models/{name}/infer", summary="Inference")
@router.post("/models/{name}/versions/{version}/infer", summary="Inference (version)")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """KServe v2 inference; see the module docstring for inputs, outputs and parameters."""
    state = get_state(request)
    with v2_protocol.lease(state, name, version) as served:  # this version answers, even if swapped meanwhile
        body = decompress(
            await request.body(), request.headers.get("content-encoding"), state.settings.max_body_bytes
        )
        header, binary = split_binary(body, request.headers.get("inference-header-content-length"), served)
        req = parse_json_request(header, binary)
        default_binary = bool(req.parameters.get("binary_data_output", False))
        result = await v2_protocol.infer(state, served, req, default_binary)
    outputs, blobs = [], []
    for tensor in result.outputs:
        entry, blob = json_output(tensor)
        outputs.append(entry)
        if blob is not None:
            blobs.append(blob)
    response: dict[str, Any] = {
        "model_name": result.served.name,
        "model_version": str(result.served.version),
        "outputs": outputs,
    }
    if req.id is not None:
        response["id"] = req.id
    if not blobs:
        return json_response(response)
    head = dumps(response)
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
