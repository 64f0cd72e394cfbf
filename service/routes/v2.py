"""KServe Open Inference Protocol v2 (REST) with Triton's binary-tensor and classification extensions.

Enough of it for the stock ``tritonclient[http]`` client (docs/serving.md §1.9-1.10):

- ``GET /v2``; ``GET /v2/models/{name}[/versions/{v}]`` (metadata), ``.../ready``, ``.../config`` (Triton JSON).
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

import json
import math
import struct
import zlib
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from rescom import __version__
from rescom.calibration import calibrated_probs
from service.auth import require_api_key
from service.errors import BadRequest, NotFound, PayloadTooLarge, ServiceError
from service.priors import parse_prior, parse_temperature, temperature_class_bias
from service.registry import ServedModel
from service.responses import dumps, error_response, json_response
from service.state import ServiceState, get_state

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["kserve-v2"], dependencies=[Depends(require_api_key)])

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "parameters"]
OUTPUTS = ("logits", "probabilities")


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    """``{"name", "version", "extensions"}``."""
    return json_response({"name": "rescom", "version": __version__, "extensions": EXTENSIONS})


@router.get("/models/{name}", summary="Model metadata")
@router.get("/models/{name}/versions/{version}", summary="Model metadata (version)")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Inputs and outputs with ``-1`` as the batch axis."""
    served = get_state(request).registry.get(name, version)
    spec = served.spec
    c = spec.num_classes
    return json_response(
        {
            "name": served.name,
            "versions": [str(m.version) for m in get_state(request).registry.served_versions(served.name)],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": spec.input.name, "datatype": "UINT8", "shape": [-1, *spec.image_shape]}],
            "outputs": [{"name": o, "datatype": "FP32", "shape": [-1, c]} for o in OUTPUTS],
        }
    )


@router.get("/models/{name}/ready", summary="Model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (version)")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 with an empty body when the model (version) is served; 404 when unknown; 400 while not loaded."""
    state = get_state(request)
    try:
        state.registry.get(name, version)
    except NotFound:
        raise
    except ServiceError as err:
        return error_response(400, err.message)
    if state.draining:
        return error_response(400, "the server is shutting down")
    return Response(status_code=200)


@router.get("/models/{name}/config", summary="Model configuration (Triton JSON)")
@router.get("/models/{name}/versions/{version}/config", summary="Model configuration (version)")
async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    """The model as a Triton ``ModelConfig`` (dims without the batch axis; ``max_batch_size`` > 0)."""
    state = get_state(request)
    served = state.registry.get(name, version)
    spec, runtime, s = served.spec, served.runtime, state.settings
    c = spec.num_classes
    return json_response(
        {
            "name": served.name,
            "platform": "onnxruntime_onnx",
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
    )


@router.post("/models/{name}/infer", summary="Inference")
@router.post("/models/{name}/versions/{version}/infer", summary="Inference (version)")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """KServe v2 inference; see the module docstring for inputs, outputs and parameters."""
    state = get_state(request)
    served = state.registry.get(name, version)
    body = _decompress(
        await request.body(), request.headers.get("content-encoding"), state.settings.max_body_bytes
    )
    header, binary = _split(body, request.headers.get("inference-header-content-length"), served)
    req = _parse_header(header)
    images = _input_tensor(req, binary, served, state.settings.max_images_per_request)  # [n, H, W, 3]
    wanted = _requested_outputs(req)
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("parameters must be an object")
    timeout = _timeout(params, state)

    logits = await served.batcher.submit(images, timeout_s=timeout)  # [n, C] float32
    adaptive = state.registry.adaptive(served.name)
    probs = None
    if any(name == "probabilities" for name, _, _ in wanted):
        probs = await _probabilities(state, served, logits, params)
    adaptive.observe(logits)

    outputs, blobs = [], []
    for out_name, binary_out, classes in wanted:
        tensor = logits if out_name == "logits" else probs
        assert tensor is not None
        entry, blob = _encode_output(out_name, tensor, binary_out, classes, served)
        outputs.append(entry)
        if blob is not None:
            blobs.append(blob)
    response: dict[str, Any] = {
        "model_name": served.name,
        "model_version": str(served.version),
        "outputs": outputs,
    }
    if "id" in req:
        response["id"] = req["id"]
    if not blobs:
        return json_response(response)
    head = dumps(response)
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


# ---------------------------------------------------------------------------------------------- parsing


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    if not encoding or encoding.strip().lower() == "identity":
        return body
    enc = encoding.strip().lower()
    if enc not in ("gzip", "deflate"):
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as err:
        raise BadRequest(f"body is not valid {enc} data: {err}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes (RESCOM_MAX_BODY_BYTES)")
    return out


def _split(body: bytes, header_length: str | None, served: ServedModel) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(
            f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
        ) from None
    if not 0 <= n <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
    if n == 0:  # raw binary request: the body is the single input, batch 1
        shape = [1, *served.spec.image_shape]
        header = {
            "inputs": [
                {
                    "name": served.spec.input.name,
                    "shape": shape,
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(body)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
        return json.dumps(header).encode(), memoryview(body)
    return body[:n], memoryview(body)[n:]


def _parse_header(header: bytes) -> dict[str, Any]:
    if not header:
        raise BadRequest("empty request body; send a KServe v2 inference request")
    try:
        req = json.loads(header)
    except RecursionError:
        raise BadRequest("inference request header is not valid JSON: nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an integer with too many digits
        raise BadRequest(f"inference request header is not valid JSON: {err}") from None
    if not isinstance(req, dict):
        raise BadRequest("inference request must be a JSON object")
    return req


def _input_tensor(
    req: dict[str, Any], binary: memoryview, served: ServedModel, max_images: int
) -> np.ndarray:
    spec = served.spec
    expected = f"{spec.input.name!r} UINT8 [n, {', '.join(map(str, spec.image_shape))}]"
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"model {served.name!r} takes exactly one input, {expected}")
    inp = inputs[0]
    if inp.get("name") != spec.input.name:
        raise BadRequest(f"unknown input {inp.get('name')!r}; model {served.name!r} takes {expected}")
    if inp.get("datatype") != "UINT8":
        raise BadRequest(
            f"input {spec.input.name!r} must be UINT8 (preprocessed pixels), got {inp.get('datatype')!r}"
        )
    shape = inp.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(d, int) for d in shape)
        or tuple(shape[1:]) != spec.image_shape
        or shape[0] < 1
    ):
        raise BadRequest(
            f"input shape {shape} does not match {expected} with n >= 1 (images are decoded, resized "
            f"to {spec.resize} and centre-cropped to {spec.crop} by the client)"
        )
    if shape[0] > max_images:
        raise PayloadTooLarge(f"{shape[0]} images in one request; the limit is {max_images}")
    count = math.prod(shape)
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"inputs[0].parameters must be an object, got {type(params).__name__}")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size != count:
            raise BadRequest(
                f"binary_data_size is {size!r}; a UINT8 tensor of shape {shape} needs {count} bytes"
            )
        if len(binary) != size:
            raise BadRequest(
                f"the body carries {len(binary)} bytes of binary data; binary_data_size says {size}"
            )
        return np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    if len(binary):
        raise BadRequest(
            f"the body carries {len(binary)} bytes of binary data but no input has binary_data_size"
        )
    data = inp.get("data")
    if data is None:
        raise BadRequest(f"input {spec.input.name!r} has neither 'data' nor parameters.binary_data_size")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise BadRequest("input data must be a (flat or nested) list of integers") from None
    if arr.size != count:
        raise BadRequest(f"input data has {arr.size} elements; shape {shape} needs {count}")
    if arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise BadRequest("UINT8 input data must be integers in 0..255")
    return arr.astype(np.uint8).reshape(shape)


def _requested_outputs(req: dict[str, Any]) -> list[tuple[str, bool, int]]:
    """``(name, binary, classification k or 0)`` for each requested output."""
    params = req.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    outputs = req.get("outputs")
    if outputs is None:
        return [(name, default_binary, 0) for name in OUTPUTS]
    if not isinstance(outputs, list) or not outputs:
        raise BadRequest('outputs must be a non-empty list of {"name": ...} objects')
    wanted = []
    for out in outputs:
        if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
            got = out.get("name") if isinstance(out, dict) else out
            raise BadRequest(f"unknown output {got!r}; outputs: {', '.join(OUTPUTS)}")
        p = out.get("parameters") or {}
        if not isinstance(p, dict):
            raise BadRequest(
                f"parameters of output {out['name']!r} must be an object, got {type(p).__name__}"
            )
        k = p.get("classification", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise BadRequest(f"classification must be a non-negative integer, got {k!r}")
        wanted.append((out["name"], bool(p.get("binary_data", default_binary)), k))
    return wanted


def _timeout(params: dict[str, Any], state: ServiceState) -> float:
    timeout = state.settings.request_timeout_s
    if "timeout" in params:
        us = params["timeout"]
        if isinstance(us, bool) or not isinstance(us, int) or us < 0:
            raise BadRequest(f"parameters.timeout must be a non-negative integer (microseconds), got {us!r}")
        if 0 < us < timeout * 1e6:  # a request may shorten the deadline, never lengthen it
            timeout = us / 1e6
    return timeout


async def _probabilities(
    state: ServiceState, served: ServedModel, logits: np.ndarray, params: dict[str, Any]
) -> np.ndarray:
    spec = served.spec
    choice = parse_prior(params.get("prior"), spec, state.settings.default_prior)
    t = parse_temperature(params.get("temperature"), spec)
    bias = temperature_class_bias(params.get("temperature"), spec)  # b [C] of BCTS, None = 0
    if choice.kind == "adaptive":
        pi = await state.registry.adaptive(served.name).estimate()
    elif choice.kind == "train":
        pi = spec.train_prior
    else:
        pi = choice.weights
    return calibrated_probs(logits, temperature=t, prior=pi, class_bias=bias).astype(np.float32)  # [n, C]


# ---------------------------------------------------------------------------------------------- encoding


def _encode_output(
    name: str, tensor: np.ndarray, binary: bool, classes: int, served: ServedModel
) -> tuple[dict[str, Any], bytes | None]:
    n, c = tensor.shape
    if classes:
        k = min(classes, c)
        labels = served.spec.class_names
        order = np.argsort(-tensor, axis=1, kind="stable")[:, :k]  # [n, k]
        values = np.take_along_axis(tensor, order, axis=1)
        strings = [
            f"{v:f}:{i}:{labels[i]}"
            for row_v, row_i in zip(values.tolist(), order.tolist(), strict=True)
            for v, i in zip(row_v, row_i, strict=True)
        ]
        entry: dict[str, Any] = {"name": name, "datatype": "BYTES", "shape": [n, k]}
        if not binary:
            entry["data"] = strings
            return entry, None
        blob = b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in strings))
        entry["parameters"] = {"binary_data_size": len(blob)}
        return entry, blob
    entry = {"name": name, "datatype": "FP32", "shape": [n, c]}
    if not binary:
        entry["data"] = tensor.ravel().tolist()
        return entry, None
    blob = np.ascontiguousarray(tensor, dtype="<f4").tobytes()
    entry["parameters"] = {"binary_data_size": len(blob)}
    return entry, blob
