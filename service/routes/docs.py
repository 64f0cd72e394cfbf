"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from assets that ship with the service.

Nothing is loaded from another host when the pages open, so they work offline and in air-gapped clusters.

The assets are vendored unmodified under ``service/static/docs/`` with their licenses (``swagger-ui/``: npm
``swagger-ui-dist`` 5.35.0, Apache-2.0; ``redoc/``: npm ``redoc`` 2.5.4, MIT) and served at
``/docs-assets/<package>/<file>``. One thing is changed as they are served: ReDoc's sidebar credit loads its logo
from Redocly's CDN (no option turns it off), so that URL is replaced by an empty one; the image then hides itself
and the "API docs by Redocly" link stays. Like the OpenAPI schema, the pages and their assets need no API key (they
hold nothing but the API's description; calls made from Swagger UI's "Try it out" send the key the user enters).
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import HTMLResponse, Response

from service.errors import NotFound

__all__ = ["router", "DOCS_ASSETS", "ASSETS_URL", "OFFLINE_REWRITES"]

DOCS_ASSETS = Path(__file__).resolve().parents[1] / "static" / "docs"
ASSETS_URL = "/docs-assets"
_MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
_CACHE = "public, max-age=86400"
# (file, external URL, replacement): requests the vendored bundles would make to other hosts when a page loads.
OFFLINE_REWRITES = (("redoc/redoc.standalone.js", b'"https://cdn.redoc.ly/redoc/logo-mini.svg"', b'""'),)

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for ``/openapi.json``."""
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/swagger-ui/favicon-32x32.png",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_ui_parameters={"validatorUrl": None},  # never send the schema to the public validator
    )


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc for ``/openapi.json``, without web fonts (the page uses the system's)."""
    app = request.app
    return get_redoc_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{ASSETS_URL}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_URL}/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )


@router.api_route(ASSETS_URL + "/{package}/{name}", methods=["GET", "HEAD"])
async def docs_asset(package: str, name: str) -> Response:
    """One vendored file (only ``.js``, ``.css`` and ``.png`` files directly inside a package folder)."""
    path = DOCS_ASSETS / package / name
    suffix = Path(name).suffix
    if (
        package not in ("swagger-ui", "redoc")
        or "/" in name
        or name.startswith(".")
        or suffix not in _MEDIA_TYPES
        or not path.is_file()
    ):
        raise NotFound(f"no documentation asset {package[:40]!r}/{name[:80]!r}")
    return Response(
        _asset_bytes(f"{package}/{name}"), media_type=_MEDIA_TYPES[suffix], headers={"Cache-Control": _CACHE}
    )


@functools.lru_cache(maxsize=16)
def _asset_bytes(relative: str) -> bytes:
    """The file's bytes with :data:`OFFLINE_REWRITES` applied (read once; the assets never change at run time)."""
    data = (DOCS_ASSETS / relative).read_bytes()
    for file, external, local in OFFLINE_REWRITES:
        if file == relative:
            data = data.replace(external, local)
    return data
