"""The service's error hierarchy. Each class carries its HTTP status; handlers turn it into ``{"error": ...}``.

Messages say what was wrong and what is allowed; they never contain tracebacks or server file paths. This
module imports nothing from FastAPI, so the batcher and the runtime can raise these errors too.

```
ServiceError (500)
├── BadRequest (400)             malformed request: bad JSON, bad base64, empty body, bad tensor
├── Unauthorized (401)           missing or wrong bearer token (WWW-Authenticate: Bearer)
├── NotFound (404)               unknown model or version
├── PayloadTooLarge (413)        body, image pixel count or image count above the limits
├── UnsupportedMediaType (415)   Content-Type the endpoint does not take
├── Unprocessable (422)          well-formed but unusable: undecodable image, invalid option
├── Unavailable (503)            not ready, draining, model failed
│   ├── Overloaded (503)         queue full (Retry-After)
│   └── ShuttingDown (503)       still unanswered when the drain timeout ran out (Retry-After)
└── DeadlineExceeded (504)       request waited in the queue past its deadline
```
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ServiceError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "Unprocessable",
    "Unavailable",
    "Overloaded",
    "ShuttingDown",
    "DeadlineExceeded",
    "load_json",
]


class ServiceError(Exception):
    """Base class: an error with an HTTP status, a client-safe message and optional response headers.

    Args:
        message: one line for the client: what was wrong and what is allowed.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    status_code = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(ServiceError):
    """The request is malformed (400)."""

    status_code = 400


class Unauthorized(ServiceError):
    """Missing or invalid bearer token (401).

    Args:
        message: one line for the client.
        invalid_token: a token was sent but is wrong (``WWW-Authenticate: Bearer error="invalid_token"``);
            ``False``: none was sent.
    """

    status_code = 401

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        value = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
        super().__init__(message, headers={"WWW-Authenticate": value})


class NotFound(ServiceError):
    """Unknown model, version or resource (404)."""

    status_code = 404


class PayloadTooLarge(ServiceError):
    """Body, image or image count above the configured limits (413)."""

    status_code = 413


class UnsupportedMediaType(ServiceError):
    """Content-Type not accepted by the endpoint (415)."""

    status_code = 415


class Unprocessable(ServiceError):
    """Well-formed request whose content cannot be used: undecodable image, out-of-range option (422)."""

    status_code = 422


class Unavailable(ServiceError):
    """The service or model cannot take the request now (503)."""

    status_code = 503


class Overloaded(Unavailable):
    """The batching queue is full; the client should retry after ``retry_after_s`` seconds (503).

    Args:
        message: one line for the client.
        retry_after_s: the ``Retry-After`` header, in whole seconds (at least 1).
    """

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s)))})


class ShuttingDown(Unavailable):
    """The server is stopping and the request did not finish within the drain timeout (503 + ``Retry-After``).

    Sent instead of uvicorn's plain-text 500 when the graceful shutdown cancels a request that is still running;
    the client should retry on another replica.

    Args:
        message: one line for the client (the default names RESCOM_DRAIN_TIMEOUT_S).
    """

    def __init__(
        self,
        message: str = "the server is shutting down and could not finish this request within its drain timeout "
        "(RESCOM_DRAIN_TIMEOUT_S); retry on another replica",
    ) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class DeadlineExceeded(ServiceError):
    """The request waited in the queue longer than its deadline (504)."""

    status_code = 504


def load_json(data: bytes, what: str) -> Any:
    """Decode the JSON of a request part; every way it can fail is a :class:`BadRequest` naming ``what``.

    Raises:
        BadRequest: invalid JSON or UTF-8, nesting too deep for the decoder, an integer with too many digits.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise BadRequest(f"{what} is not valid JSON: nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an integer with too many digits
        raise BadRequest(f"{what} is not valid JSON: {err}") from None
