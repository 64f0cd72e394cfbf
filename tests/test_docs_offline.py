"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) render from assets that ship with the service: a real server, a
real headless Chromium with every request logged; any request to another host fails the test (and is blocked,
so nothing leaves the machine even if one is made). The demo page links to both.

Needs the ``playwright`` package and a system Chromium, like tests/test_demo_page.py (skips without them unless
``RESCOM_REQUIRE_BROWSER`` is set).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rescom_dev.browser import CHROMIUM_ARGS, chromium_path
from rescom_dev.onnx_models import write_version
from rescom_dev.servers import free_port, running_server
from service.config import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
KEY = "docs-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("models")
    write_version(repo, "tiny", 1)
    s = Settings(model_repository=repo, port=free_port(), poll_interval_s=0, log_level="warning", api_key=KEY)
    with running_server(s) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", exc_type=ImportError)
    executable = chromium_path()
    if executable is None:
        message = "no system Chromium (apt-get install chromium, or set RESCOM_CHROMIUM)"
        if os.environ.get("RESCOM_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def load_logged(browser: Any, url: str, path: str, ready_selector: str) -> tuple[list[str], list[str], Any]:
    """Open ``url + path``; return every request URL, the blocked (off-host) ones, and the page."""
    context = browser.new_context()
    requests: list[str] = []
    blocked: list[str] = []

    def gate(route: Any) -> None:
        target = route.request.url
        if target.startswith(url + "/") or target.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(target)
            route.abort()

    context.route("**/*", gate)
    page = context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url + path, wait_until="networkidle", timeout=60_000)
    page.wait_for_selector(ready_selector, timeout=60_000)
    assert not errors, errors
    return requests, blocked, page


@pytest.mark.parametrize(
    "path, ready, text",
    [
        ("/docs", ".swagger-ui .opblock-tag", "/v2/models/{name}/infer"),
        ("/redoc", ".api-content h1", "ResCom inference service"),
    ],
)
def test_docs_render_with_zero_external_requests(server, browser, path, ready, text):
    requests, blocked, page = load_logged(browser, server, path, ready)
    assert blocked == [] and all(r.startswith(server) or r.startswith(("data:", "blob:")) for r in requests)
    assert any("/docs-assets/" in r for r in requests) and any(r.endswith("/openapi.json") for r in requests)
    assert text in page.content()
    page.context.close()


def test_docs_pages_and_assets_are_served_without_the_key(server):
    for path in ("/docs", "/redoc", "/openapi.json", "/docs-assets/redoc/redoc.standalone.js"):
        assert httpx.get(server + path).status_code == 200, path
    bundle = httpx.get(server + "/docs-assets/redoc/redoc.standalone.js").content
    assert b"cdn.redoc.ly/redoc/logo-mini.svg" not in bundle and b"API docs by Redocly" in bundle
    css = httpx.get(server + "/docs-assets/swagger-ui/swagger-ui.css")
    assert css.headers["content-type"].startswith("text/css")
    for bad in ("/docs-assets/redoc/LICENSE", "/docs-assets/../main.py", "/docs-assets/other/x.js"):
        assert httpx.get(server + bad).status_code == 404, bad
    page = httpx.get(server + "/").text
    assert 'href="/docs"' in page and 'href="/redoc"' in page
    for html in (httpx.get(server + "/docs").text, httpx.get(server + "/redoc").text):
        assert "http://" not in html.replace(server, "") and "https://" not in html
