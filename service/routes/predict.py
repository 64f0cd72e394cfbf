"""``POST /predict``: images in (raw body, multipart ``file`` fields, or JSON base64), calibrated top-k out.

Flow: check the token and the query -> lease the model version (:meth:`service.registry.ModelRegistry.lease`)
-> read the body -> :func:`service.inference.predict_encoded` (validate, decode, batch, calibrate, top-k). Route
code never sees a batch.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from service.auth import OPENAPI_SECURITY, check_api_key
from service.config import Settings
from service.errors import BadRequest, ServiceError, Unprocessable, UnsupportedMediaType, load_json
from service.inference import predict_encoded
from service.responses import json_response
from service.schemas import PRIOR_DOC, TEMPERATURE_DOC, ErrorResponse, PredictJSONRequest, PredictResponse
from service.state import get_state

__all__ = ["router", "parse_query", "is_raw_image", "EMPTY_BODY"]

router = APIRouter(tags=["predict"])

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
    model, version = options.pop("model"), options.pop("version")
    registry = state.registry
    with contextlib.ExitStack() as leases:
        served = None
        try:  # before the body is read: the request keeps this version until it is answered
            served = leases.enter_context(registry.lease(model, version))
        except ServiceError:
            if not _is_json(request):  # a JSON body may still name the model
                raise
        blobs, body_options = await _read_images(request, state.settings)
        named = {k: body_options.pop(k) for k in ("model", "version") if body_options.get(k) is not None}
        if served is None or named:
            served = leases.enter_context(
                registry.lease(named.get("model", model), named.get("version", version))
            )
        options.update({k: v for k, v in body_options.items() if v is not None})
        result = await predict_encoded(state, served, blobs, **options)
    return json_response(result)


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == "application/json"


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
        text = options["top_k"]
        if not _INTEGER.fullmatch(text):  # int() would also take "1_0", " 3", "+3" and "٣"
            raise Unprocessable(f"top_k must be an integer, got {options['top_k'][:20]!r}")
        options["top_k"] = int(text)
    return options


_INTEGER = re.compile(r"-?[0-9]{1,9}")


def is_raw_image(content_type: str) -> bool:
    """True for the raw-body form: ``image/*``, ``application/octet-stream`` or no Content-Type."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("image/") or media in ("", "application/octet-stream")


EMPTY_BODY = (
    "empty request body; send an image file (Content-Type: image/*), multipart 'file' fields or JSON "
    '{"images": [base64, ...]}'
)


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
    payload = load_json(body, "request body")
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
