"""Security properties: bearer auth on every route (found by walking the app's routes, so new routes are covered
without editing this file), constant-time comparison, size limits, no leaks in errors, loopback-only defaults,
non-root container.

``tests/test_service.py::test_bearer_token_auth`` checks a few routes by hand; this module checks all of them.
"""

from __future__ import annotations

import gzip
import inspect
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability_helpers import ROOT, leaks, model_repository
from starlette.routing import Route

from rescom_dev.images import encode, random_images
from rescom_dev.prometheus import metric_value
from rescom_dev.servers import free_port, local_settings, running_server, service_process
from service import auth
from service.config import Settings
from service.main import create_app

pytestmark = pytest.mark.timeout(120)

KEY = "correct-horse-battery-staple-7f3a"
BODY_LIMIT = 256 * 1024
PNG = encode(random_images(1, seed=2)[0])

# Routes that answer without a token, on purpose: probes, the API description, and the demo page's static files
# (which hold no data; the page calls the protected API with the user's token). Anything else must be protected.
PUBLIC = {
    "/health/live",
    "/health/ready",
    "/v2/health/live",
    "/v2/health/ready",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/docs-assets/{package}/{name}",
    "/",
    "/static/{name}",
}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    repo, name = model_repository(tmp_path_factory.mktemp("models"))
    settings = local_settings(repo, model=name, api_key=KEY, max_body_bytes=BODY_LIMIT, log_level="debug")
    app = create_app(settings)
    with running_server(settings, app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield {"app": app, "url": url, "client": client, "name": name}


def _routes(routes: list, prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path template, methods) of every route, descending into included routers.

    FastAPI up to 0.11x flattens included routers into ``app.routes``; newer versions keep each as one node with
    ``original_router`` and ``include_context.prefix``. Both shapes are walked.
    """
    for route in routes:
        sub = getattr(route, "original_router", None)
        if sub is not None:
            yield from _routes(
                sub.routes, prefix + getattr(getattr(route, "include_context", None), "prefix", "")
            )
        elif isinstance(route, Route):
            yield prefix + route.path, set(route.methods or ())


def _endpoints(app, model: str) -> list[tuple[str, str, str]]:
    """(method, concrete path, route template) for every route of the app; path parameters get real values."""
    values = {"name": model, "version": "1"}
    out = []
    for path, methods in _routes(app.routes):
        concrete = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "app.js"), path)
        out += [(method, concrete, path) for method in sorted(methods) if method != "HEAD"]
    return out


def test_route_walk_finds_every_documented_operation(secured):
    """Guards the walker itself: everything in the OpenAPI schema must be among the routes it found."""
    found = {(m, t) for m, _, t in _endpoints(secured["app"], secured["name"])}
    spec = secured["client"].get("/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert documented and documented <= found, documented - found


BEARER = {"Authorization": f"Bearer {KEY}"}


def test_every_route_but_the_public_ones_requires_the_token(secured):
    c, endpoints = secured["client"], _endpoints(secured["app"], secured["name"])
    protected = [e for e in endpoints if e[2] not in PUBLIC]
    assert {"/predict", "/metrics", "/v1/models", "/v2/models/{name}/infer"} <= {e[2] for e in protected}
    assert len(protected) >= 15, protected
    for method, path, _ in protected:
        for headers, invalid in (
            ({}, False),
            ({"Authorization": "Bearer wrong"}, True),
            ({"Authorization": f"Bearer {KEY}x"}, True),
            ({"Authorization": f"Bearer {KEY[:-1]}"}, True),
            ({"Authorization": f"Basic {KEY}"}, False),
            ({"Authorization": KEY}, False),
            ({"Authorization": "Bearer"}, False),
            ({"X-API-Key": KEY}, False),
        ):
            r = c.request(method, path, headers=headers, content=PNG, params={})
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["WWW-Authenticate"] == ('Bearer error="invalid_token"' if invalid else "Bearer")
            assert list(r.json()) == ["error"] and KEY not in r.text
        r = c.request(method, path, headers=BEARER)
        assert r.status_code not in (401, 403) and r.status_code < 500, (method, path, r.status_code, r.text)
    for method, path, template in endpoints:
        if template in PUBLIC:
            r = c.request(method, path)
            assert r.status_code not in (401, 403) and r.status_code < 500, (method, path, r.status_code)


@pytest.mark.parametrize(
    "headers", [{"Content-Type": "image/png"}, {}, {"Content-Type": "application/octet-stream"}]
)
def test_raw_body_fast_path_checks_the_token_too(secured, headers):
    c = secured["client"]
    assert c.post("/predict", content=PNG, headers=headers).status_code == 401
    assert (
        c.post("/predict", content=PNG, headers={**headers, "Authorization": "bearer " + KEY}).status_code
        == 200
    )


def test_unauthenticated_requests_never_reach_the_model(secured):
    c, name = secured["client"], secured["name"]

    def batches() -> float:
        return metric_value(c.get("/metrics", headers=BEARER).text, "rescom_batch_size_count", model=name)

    before = batches()
    for _ in range(5):
        assert c.post("/predict", content=PNG, headers={"Content-Type": "image/png"}).status_code == 401
        assert c.post("/predict", files=[("file", ("a.png", PNG, "image/png"))]).status_code == 401
        assert c.post(f"/v2/models/{name}/infer", content=b'{"inputs": []}').status_code == 401
    assert batches() == before


def test_token_comparison_is_constant_time():
    source = inspect.getsource(auth.verify_bearer)
    assert "compare_digest(" in source
    # The secret is read in exactly one place of the service: that comparison.
    reads = [
        (path.name, line.strip())
        for path in sorted((ROOT / "service").rglob("*.py"))
        for line in path.read_text().splitlines()
        if "get_secret_value()" in line
    ]
    assert [r for r in reads if "compare_digest" not in r[1] and r[0] != "config.py"] == [], reads
    config = (ROOT / "service" / "config.py").read_text()
    assert (
        config.count("get_secret_value()") == 1 and "not value.get_secret_value()" in config
    )  # emptiness test


def test_the_key_is_never_logged_or_returned(secured, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    c, name = secured["client"], secured["name"]
    for path in (
        "/v1/models",
        f"/v1/models/{name}",
        f"/v2/models/{name}/config",
        "/metrics",
        "/openapi.json",
    ):
        r = c.get(path, headers=BEARER)
        assert r.status_code == 200 and KEY not in r.text, path
    c.post("/predict", content=PNG, headers={"Authorization": f"Bearer {KEY}0"})
    assert not [r for r in caplog.records if KEY in r.getMessage()]


@pytest.mark.parametrize(
    ("route", "headers"),
    [
        ("/predict", {"Content-Type": "image/png"}),  # raw body: the fast path
        ("/predict", {"Content-Type": "application/json"}),
        ("/predict", {"Content-Type": "multipart/form-data; boundary=xyz"}),
        ("/v2/models/{name}/infer", {}),
    ],
)
def test_bodies_over_the_limit_are_refused_with_or_without_content_length(secured, route, headers):
    c, path = secured["client"], route.replace("{name}", secured["name"])
    big = b"a" * (BODY_LIMIT + 1)
    if "multipart" in headers.get("Content-Type", ""):
        big = (
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + big + b"\r\n--xyz--\r\n"
        )  # well-formed, so that only its size can be refused

    def chunks():  # no Content-Length: chunked transfer encoding, the limit is enforced while reading
        for i in range(0, len(big), 16384):
            yield big[i : i + 16384]

    for content in (big, chunks()):
        r = c.post(path, content=content, headers={**headers, **BEARER})
        assert r.status_code == 413 and "RESCOM_MAX_BODY_BYTES" in r.json()["error"], r.text
    assert c.get("/health/ready").status_code == 200


def test_compressed_bomb_is_refused(secured):
    c, name = secured["client"], secured["name"]
    bomb = gzip.compress(b"[" + b" " * (64 * BODY_LIMIT) + b"]")  # ~65 kB that inflate to 16 MiB
    assert len(bomb) < BODY_LIMIT
    r = c.post(f"/v2/models/{name}/infer", content=bomb, headers={"Content-Encoding": "gzip", **BEARER})
    assert r.status_code == 413 and "decompressed body" in r.json()["error"]


def test_error_responses_leak_no_traceback_path_or_file(secured):
    """Garbage sent to every route (and some path tricks): every answer is a clean 4xx/2xx, no server detail."""
    c = secured["client"]
    seen = 0
    garbage = [b"", b"\x00\xff" * 100, b"{", b'{"inputs": [{"name": 1}]}', b"[" * 3000, PNG[:50]]
    for method, path, _ in _endpoints(secured["app"], secured["name"]):
        for body in garbage:
            for params in ({}, {"top_k": "-1", "prior": "{", "version": "x"}, {"name": "../../etc/passwd"}):
                r = c.request(method, path, content=body, params=params, headers=BEARER)
                assert r.status_code < 500, (method, path, body[:20], params, r.text[:200])
                assert not leaks(r.text), (method, path, r.text[:300])
                seen += 1
    tricks = [
        "/static/..%2F..%2Fpyproject.toml",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/v1/models/..%2F..%2Fetc%2Fpasswd",
        "/v2/models/%2e%2e%2f%2e%2e/config",
        "/v2/models/../../etc/passwd/infer",
        "/predict/../../pyproject.toml",
        "/nothing-here",
    ]
    for path in tricks:
        r = c.get(path, headers=BEARER)
        assert r.status_code in (400, 401, 404, 405), (path, r.status_code)
        assert "[build-system]" not in r.text and "root:" not in r.text and not leaks(r.text), path
        seen += 1
    assert seen > 300


# ---------------------------------------------------------------------------------------------- defaults


def test_default_bind_address_is_loopback():
    assert Settings.model_fields["host"].default == "127.0.0.1"
    out = subprocess.run(
        [sys.executable, "-m", "service", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert "default 127.0.0.1" in out.stdout and "0.0.0.0" not in out.stdout


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the Linux socket table")
def test_python_m_service_listens_on_loopback_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RESCOM_HOST", raising=False)  # the default, not whatever this shell sets
    repo, _ = model_repository(tmp_path)
    port = free_port()
    with service_process(repo, port):
        listening = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                    listening.append(address)
        assert listening == ["0100007F"], listening  # 127.0.0.1 (little-endian hex), nothing on 0.0.0.0 or ::


def _final_user(dockerfile: Path) -> str:
    """The effective USER of the image's last stage, ARG defaults substituted."""
    args: dict[str, str] = {}
    user = "root"
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if line.upper().startswith("FROM "):
            user = "root"  # every stage starts as root
        elif line.upper().startswith("ARG ") and "=" in line:
            key, _, value = line[4:].strip().partition("=")
            args[key.strip()] = value.strip().strip('"')
        elif line.upper().startswith("USER "):
            user = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), line[5:].strip()
            )
    return user


@pytest.mark.parametrize("name", ["service.Dockerfile", "train.Dockerfile"])
def test_container_runs_as_a_non_root_user(name: str):
    dockerfile = ROOT / "docker" / name
    if not dockerfile.exists():
        pytest.skip(f"no docker/{name}")
    user = _final_user(dockerfile)
    uid, _, gid = user.partition(":")
    assert uid not in ("", "root", "0") and gid not in ("root", "0"), user
    text = dockerfile.read_text()
    assert text.rfind("\nUSER ") < text.rfind("\nCMD "), "USER must come before the CMD it applies to"


def test_compose_publishes_on_loopback_by_default():
    compose = ROOT / "compose.yaml"
    if not compose.exists():
        pytest.skip("no compose.yaml")
    ports = [line.strip() for line in compose.read_text().splitlines() if re.match(r'\s*- "?[$\d]', line)]
    published = [p for p in ports if ":8000" in p]
    assert published and all("127.0.0.1" in p for p in published), published


def test_openapi_declares_the_bearer_scheme(secured):
    spec = secured["client"].get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"].lower() == "bearer"
    assert json.dumps(spec).count("HTTPBearer") > 5
