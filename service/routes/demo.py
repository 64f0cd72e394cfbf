"""The demo page: ``GET /`` serves a single HTML page, ``GET /static/{name}`` its script and style sheet.

The page (``service/static/``) is plain HTML, CSS and JavaScript with no build step and nothing loaded from
another origin, so it also works on an offline deployment. It talks to the public API only
(``/v1/models``, ``/predict``, ``/v1/models/{name}/prior``), with the bearer token the user types when
``RESCOM_API_KEY`` is set; the page itself and its static files are served without a token (they hold no
data).

Every response carries a Content-Security-Policy that allows scripts, styles and requests to this origin only
(images also from ``blob:``/``data:`` URLs, for the preview of a local file). The routes are left out of the
OpenAPI schema.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import Response

from service.errors import NotFound

__all__ = ["router", "STATIC_DIR", "CONTENT_SECURITY_POLICY"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

router = APIRouter(include_in_schema=False)


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


@functools.lru_cache(maxsize=16)
def _read_static(name: str) -> tuple[bytes, str]:
    """Bytes and Content-Type of ``service/static/<name>``.

    Raises:
        NotFound: the name is not a plain file name in the static folder, or has a type that is not served.
    """
    suffix = Path(name).suffix.lower()
    path = STATIC_DIR / name
    if not _STATIC_NAME.match(name) or suffix not in _CONTENT_TYPES or not path.is_file():
        raise NotFound(f"no static file {name[:80]!r}")
    return path.read_bytes(), _CONTENT_TYPES[suffix]


def _static_response(name: str) -> Response:
    body, media_type = _read_static(name)
    return Response(body, media_type=media_type, headers=_headers())


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> Response:
    """The demo page."""
    return _static_response("index.html")


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
async def static_file(name: str) -> Response:
    """A file of the demo page (``app.js``, ``style.css``)."""
    return _static_response(name)
