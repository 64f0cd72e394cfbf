"""``POST /predict``: images in (raw body, multipart ``file`` fields, or JSON base64), calibrated top-k out.

Flow: read and validate everything cheap (options, sizes) -> decode + preprocess in the decoding pool ->
``await batcher.submit(x)`` -> ``p = softmax(z / T + b + log π)`` (:func:`rescom.calibration.calibrated_probs`)
-> top-k. Route code never sees a batch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from rescom.calibration import calibrated_probs
from service.auth import OPENAPI_SECURITY, check_api_key
from service.config import Settings
from service.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from service.images import decode_images
from service.priors import parse_prior, parse_temperature, parse_top_k, temperature_class_bias
from service.registry import ServedModel
from service.responses import json_response
from service.schemas import PRIOR_DOC, TEMPERATURE_DOC, ErrorResponse, PredictJSONRequest, PredictResponse
from service.state import ServiceState, get_state

__all__ = ["router", "predict_images", "parse_query", "is_raw_image", "EMPTY_BODY"]

router = APIRouter(tags=["predict"])
INLINE_DECODE_BYTES = 32 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "malformed request"),
        (401, "missing or invalid bearer token"),
        (404, "unknown model or version"),
        (413, "body, image or image count too large"),
        (415, "unsupported Content-Type"),
        (422, "undecodable image or invalid option"),
        (503, "not ready, or queue full (Retry-After)"),
        (504, "deadline passed while queued"),
    )
}

_REQUEST_BODY = {
    "requestBody": {
        "description": "one image as the raw body, one or more images as multipart `file` fields, or JSON",
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "application/json": {"schema": PredictJSONRequest.model_json_schema()},
        },
    }
}


_QUERY = [
    ("top_k", {"type": "integer", "minimum": 1}, "classes returned per image, 1..C (default 5)"),
    ("prior", {"type": "string"}, PRIOR_DOC + " (JSON text in the query)"),
    ("temperature", {"type": "string"}, TEMPERATURE_DOC),
    ("model", {"type": "string"}, "model name (optional when one model is served)"),
    ("version", {"type": "string"}, "must equal the served version when given"),
]
_OPENAPI = {
    **_REQUEST_BODY,
    **OPENAPI_SECURITY,
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": schema, "description": doc}
        for name, schema, doc in _QUERY
    ],
}


@router.post(
    "/predict",
    response_model=None,
    responses={200: {"model": PredictResponse}, **_ERRORS},
    openapi_extra=_OPENAPI,
    summary="Classify images with prior calibration",
)
async def predict(request: Request) -> Response:
    """Classify one or more images; one prediction per image, in order. JSON-body options win over the query.

    Raw-body requests are normally answered by :class:`service.fastpath.PredictFastPath` with the same helpers;
    this route serves the multipart and JSON forms. The query and the bearer token are checked here rather than
    by FastAPI parameters and dependencies, whose per-request cost is larger than the rest of the handling.
    """
    check_api_key(request)
    state = get_state(request)
    options = parse_query(request.query_params.multi_items())
    blobs, body_options = await _read_images(request, state.settings)
    options.update({k: v for k, v in body_options.items() if v is not None})
    result = await predict_images(state, blobs, **options)
    return json_response(result)


def parse_query(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``/predict`` query options (``top_k`` as an int); unknown names are refused.

    Raises:
        BadRequest: unknown parameter.
        Unprocessable: ``top_k`` is not an integer.
    """
    allowed = tuple(name for name, _, _ in _QUERY)
    options: dict[str, Any] = dict.fromkeys(allowed)
    for key, value in items:
        if key not in options:
            raise BadRequest(f"unknown query parameter {key!r}; allowed: {', '.join(allowed)}")
        options[key] = value
    if options["top_k"] is not None:
        try:
            options["top_k"] = int(options["top_k"])
        except ValueError:
            raise Unprocessable(f"top_k must be an integer, got {options['top_k'][:20]!r}") from None
    return options


def is_raw_image(content_type: str) -> bool:
    """True for the raw-body form: ``image/*``, ``application/octet-stream`` or no Content-Type."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("image/") or media in ("", "application/octet-stream")


EMPTY_BODY = (
    "empty request body; send an image file (Content-Type: image/*), multipart 'file' fields or JSON "
    '{"images": [base64, ...]}'
)


async def predict_images(
    state: ServiceState,
    blobs: list[bytes],
    *,
    top_k: Any = None,
    prior: Any = None,
    temperature: Any = None,
    model: str | None = None,
    version: Any = None,
) -> dict[str, Any]:
    """Validate options, decode, run through the batcher and calibrate (the transport-independent part)."""
    settings = state.settings
    served = state.registry.get(model, version)
    spec = served.spec
    k = parse_top_k(top_k, spec, settings.default_top_k)
    choice = parse_prior(prior, spec, settings.default_prior)
    t = parse_temperature(temperature, spec)
    bias = temperature_class_bias(temperature, spec)  # b [C] of BCTS, None = 0
    if len(blobs) > settings.max_images_per_request:
        raise PayloadTooLarge(
            f"{len(blobs)} images in one request; the limit is {settings.max_images_per_request} "
            "(RESCOM_MAX_IMAGES_PER_REQUEST)"
        )
    decode = functools.partial(
        decode_images, blobs, resize=spec.resize, crop=spec.crop, max_pixels=settings.max_image_pixels
    )
    served.batcher.check_room(len(blobs))  # overloaded: reject before decoding, not after
    served.batcher.announce()
    try:
        if sum(len(b) for b in blobs) <= INLINE_DECODE_BYTES:
            x = decode()  # small images: a thread hop costs more than decoding them here
        else:
            x = await asyncio.get_running_loop().run_in_executor(
                state.decode_pool, decode
            )  # [n, crop, crop, 3]
    except BaseException:
        served.batcher.withdraw()
        raise
    logits = await served.batcher.submit(x, timeout_s=settings.request_timeout_s, announced=True)  # [n, C]
    adaptive = state.registry.adaptive(served.name)
    if choice.kind == "adaptive":
        pi = await adaptive.estimate()
    elif choice.kind == "train":
        pi = spec.train_prior
    else:
        pi = choice.weights  # None = uniform
    adaptive.observe(logits)
    probs = calibrated_probs(logits, temperature=t, prior=pi, class_bias=bias)  # [n, C] float64
    return _response(served, probs, k, choice.kind, t)


def _response(
    served: ServedModel, probs: np.ndarray, k: int, prior: str, temperature: float
) -> dict[str, Any]:
    names = served.spec.class_names
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # [n, k]
    scores = np.take_along_axis(probs, order, axis=1).tolist()  # [n, k]
    predictions = []
    for idx, sc in zip(order.tolist(), scores, strict=True):
        top = [{"label": names[c], "class_id": c, "score": s} for c, s in zip(idx, sc, strict=True)]
        predictions.append({"label": names[idx[0]], "class_id": idx[0], "score": sc[0], "top_k": top})
    return {
        "model": served.name,
        "version": served.version,
        "provider": served.provider,
        "calibration": {"prior": prior, "temperature": temperature},
        "predictions": predictions,
    }


async def _read_images(request: Request, settings: Settings) -> tuple[list[bytes], dict[str, Any]]:
    """The encoded images of a request and, for JSON bodies, the options it carries."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        return await _read_multipart(request, settings), {}
    if media == "application/json":
        return _parse_json(await request.body())
    if is_raw_image(media):
        body = await request.body()
        if not body:
            raise BadRequest(EMPTY_BODY)
        return [body], {}
    raise UnsupportedMediaType(
        f"Content-Type {media!r} is not accepted; use image/* (raw image body), multipart/form-data (fields "
        "named 'file') or application/json ({\"images\": [base64, ...]})"
    )


async def _read_multipart(request: Request, settings: Settings) -> list[bytes]:
    async with request.form(
        max_files=settings.max_images_per_request, max_fields=16, max_part_size=settings.max_body_bytes
    ) as form:
        files = [f for f in form.getlist("file") if not isinstance(f, str)]
        if not files:
            fields = ", ".join(sorted(set(form.keys()))) or "none"
            raise BadRequest(f"multipart body has no file in a field named 'file' (fields: {fields})")
        return [await f.read() for f in files]


def _parse_json(body: bytes) -> tuple[list[bytes], dict[str, Any]]:
    try:
        payload = json.loads(body)
    except RecursionError:
        raise BadRequest("request body is not valid JSON: nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an integer with too many digits
        raise BadRequest(f"request body is not valid JSON: {err}") from None
    try:
        req = PredictJSONRequest.model_validate(payload)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(
            f'invalid JSON request: {loc}: {first["msg"]}; expected {{"images": [base64, ...], '
            '"top_k"?, "prior"?, "temperature"?, "model"?, "version"?}'
        ) from None
    blobs = []
    for i, text in enumerate(req.images):
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            blobs.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as err:
            raise BadRequest(f"images[{i}] is not valid base64: {err}") from None
    options = {
        "top_k": req.top_k,
        "prior": req.prior,
        "temperature": req.temperature,
        "model": req.model,
        "version": req.version,
    }
    return blobs, options
