"""Optional bearer-token authentication (``RESCOM_API_KEY``).

When an API key is set, every route except the health probes (and the OpenAPI docs) requires
``Authorization: Bearer <key>``; the comparison is constant-time (:func:`hmac.compare_digest`). A missing or
wrong token gets 401 with ``WWW-Authenticate: Bearer``. Without a key the dependency lets everything through.
A request with more than one ``Authorization`` header gets 400 on every path (:func:`authorization_header`), so
that no two layers can disagree on which one counts.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.errors import BadRequest, Unauthorized
from service.state import get_state

__all__ = [
    "require_api_key",
    "check_api_key",
    "verify_bearer",
    "authorization_header",
    "bearer_scheme",
    "OPENAPI_SECURITY",
]

# For routes that call check_api_key() themselves (the /predict hot path skips FastAPI's dependency machinery).
OPENAPI_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}

bearer_scheme = HTTPBearer(auto_error=False, description="the server's RESCOM_API_KEY, when it sets one")


async def require_api_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)
) -> None:  # ``credentials`` only documents the scheme in OpenAPI
    """Reject the request unless it carries the configured bearer token (a FastAPI dependency).

    It is ``async`` on purpose: FastAPI would run a plain ``def`` dependency in a thread pool on every request.

    Raises:
        Unauthorized: the server has a key and the request's token is missing or different (401).
    """
    check_api_key(request)


def check_api_key(request: Request) -> None:
    """The check itself: a no-op without ``RESCOM_API_KEY``; otherwise the ``Bearer`` token must match.

    Raises:
        Unauthorized: missing or different token (401, ``WWW-Authenticate: Bearer``).
    """
    key = get_state(request).settings.api_key
    if key is not None:
        verify_bearer(authorization_header(request.scope["headers"]), key)


def authorization_header(raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The one ``Authorization`` header of a request (ASGI raw headers), ``None`` when it has none.

    Raises:
        BadRequest: more than one ``Authorization`` header (400).
    """
    found = None
    for name, value in raw_headers:
        if name == b"authorization":
            if found is not None:
                raise BadRequest("more than one Authorization header; send exactly one")
            found = value.decode("latin-1")
    return found


def verify_bearer(authorization: str | None, key: SecretStr | None) -> None:
    """Check an ``Authorization`` header value against ``key`` (no-op when ``key`` is ``None``).

    Raises:
        Unauthorized: missing or different token.
    """
    if key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <RESCOM_API_KEY>'")
    if not hmac.compare_digest(token.encode(), key.get_secret_value().encode()):
        raise Unauthorized("invalid bearer token", invalid_token=True)
