"""Fast JSON responses (``orjson`` when installed, else the standard library) and the ``{"error": ...}`` body."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

__all__ = ["dumps", "json_response", "error_response"]

try:  # optional speed-up; the service works without it
    import orjson

    def dumps(obj: Any) -> bytes:
        """Encode ``obj`` as compact JSON bytes."""
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - depends on the environment
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    def dumps(obj: Any) -> bytes:
        """Encode ``obj`` as compact JSON bytes."""
        return _encoder.encode(obj).encode()


def json_response(obj: Any, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response without FastAPI's response-model pass (the hot paths build plain dicts)."""
    return Response(dumps(obj), status_code=status_code, headers=headers, media_type="application/json")


def error_response(status_code: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """``{"error": message}`` with ``status_code``: the KServe v2 error shape, used by every route."""
    return json_response({"error": message}, status_code, headers)
