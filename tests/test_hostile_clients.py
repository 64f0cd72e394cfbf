"""Hostile clients against the real server stack (``service.server``: uvicorn + the limited protocol) over real
sockets: header and URL floods, slow senders, idle keep-alive, the connection cap, pixel bombs, overflowing
numbers, duplicate credentials, hot reload under slow uploads, and SIGTERM under load with fresh connections.

Limits are set small here so that every attack is cheap; ``benchmarks/hostile.py`` runs the full-size attacks
and measures memory, CPU and liveness latency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import write_version
from rescom_dev.servers import free_port, service_process
from service.config import Settings
from service.main import create_app
from service.server import DrainingServer, server_config

pytestmark = pytest.mark.timeout(120)
PNG = encode(random_images(1, seed=3)[0])


@contextlib.contextmanager
def hardened_server(repo: Path, **overrides: object) -> Iterator[tuple[str, int]]:
    """``python -m service``'s server (limits, draining) in a thread; yields (url, port) once ready."""
    port = free_port()
    options = {"poll_interval_s": 0, "log_level": "warning", **overrides}
    settings = Settings(model_repository=repo, port=port, **options)
    app = create_app(settings, fast_path=False)
    server = DrainingServer(server_config(settings, app), app, 0.0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            assert thread.is_alive() and time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)
        yield url, port
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_version(root, "tiny", 1)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[tuple[str, int]]:
    with hardened_server(
        repo,
        api_key="k",
        header_timeout_s=0.5,
        body_timeout_s=0.5,
        keep_alive_timeout_s=0.5,
        max_connections=16,
        max_decoded_bytes=2**20,
    ) as running:
        yield running


def _raw(port: int, data: bytes, *, chunk: int = 65536, wait: float = 5.0) -> bytes:
    """Send ``data`` (in chunks, stopping quietly if the server closes) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        with contextlib.suppress(OSError):
            for start in range(0, len(data), chunk):
                s.sendall(data[start : start + chunk])
        return _read_all(s)


def _read_all(s: socket.socket) -> bytes:
    out = b""
    with contextlib.suppress(OSError):
        while True:
            part = s.recv(65536)
            if not part:
                break
            out += part
    return out


def _status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)


# ---------------------------------------------------------------------------------------------- floods


@pytest.mark.parametrize(
    ("request_bytes", "status", "fragment"),
    [
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request target"),
        (b"GET /health/live HTTP/1.1\r\n" + b"X-h: v\r\n" * 5000 + b"\r\n", 431, "header lines"),
        (b"GET /health/live HTTP/1.1\r\nX-h: " + b"v" * 2_000_000 + b"\r\n\r\n", 431, "exceed"),
        (b"GET /health/live HTTP/1.1\r\n" + b"X-" + b"n" * 2_000_000 + b": v\r\n\r\n", 431, "exceed"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed HTTP request"),
    ],
    ids=["endless-url", "many-headers", "endless-header-value", "endless-header-name", "garbage"],
)
def test_floods_get_a_json_4xx_before_auth(server, request_bytes: bytes, status: int, fragment: str):
    """No credentials are sent, and the server has a key: the limit answers first, in the service's format."""
    _, port = server
    code, body = _status_and_json(_raw(port, request_bytes))
    assert code == status and fragment in body["error"]


def test_slow_headers_get_408_and_are_closed(server):
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
        started = time.monotonic()
        code, body = _status_and_json(_read_all(s))
        assert code == 408 and "headers" in body["error"]
        assert time.monotonic() - started < 3


def test_a_connection_that_never_sends_is_closed(server):
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert _read_all(s) == b""  # closed after the header timeout, nothing to answer


def test_slow_body_gets_408_and_is_closed(server):
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n")
        s.sendall(b"Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + PNG[:10])
        code, body = _status_and_json(_read_all(s))
        assert code == 408 and "body" in body["error"]


def test_idle_keep_alive_is_closed(server):
    url, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert _read_all(s) == b"" and time.monotonic() - started < 3


def test_connections_beyond_the_cap_get_503_json(server):
    url, port = server
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(16)]
    try:
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            response = _read_all(extra)
        code, body = _status_and_json(response)
        assert code == 503 and b"retry-after: 1" in response.lower() and "connections" in body["error"]
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert httpx.get(url + "/health/live").status_code == 200  # the cap frees up


# ---------------------------------------------------------------------------------------------- inputs


def _png16(width: int, height: int) -> bytes:
    arr = np.random.default_rng(0).integers(0, 65535, (height, width)).astype(np.uint16)  # [H, W]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_decoded_size_budget_counts_16_bit_pixels(server):
    url, _ = server
    auth = {"Authorization": "Bearer k", "Content-Type": "image/png"}
    r = httpx.post(url + "/predict", content=_png16(800, 800), headers=auth)  # 1.28 MB decoded > 1 MiB
    assert r.status_code == 413 and "RESCOM_MAX_DECODED_BYTES" in r.json()["error"]
    r = httpx.post(url + "/predict", content=_png16(600, 600), headers=auth)  # 0.72 MB decoded
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "send",
    [
        lambda url, h: httpx.post(
            url + "/predict", params={"prior": '{"0": 1e308, "1": 1e308}'}, content=PNG, headers=h
        ),
        lambda url, h: httpx.post(
            url + "/predict",
            json={"images": [base64.b64encode(PNG).decode()], "prior": {"0": 1e308, "1": 1e308}},
            headers=h,
        ),
        lambda url, h: httpx.post(
            url + "/v2/models/tiny/infer",
            json={
                "inputs": [
                    {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}
                ],
                "parameters": {"prior": {"0": 1e308, "1": 1e308}},
            },
            headers=h,
        ),
    ],
    ids=["query", "json", "v2"],
)
def test_prior_weights_whose_sum_overflows_get_400(server, send):
    url, _ = server
    r = send(url, {"Authorization": "Bearer k"})
    assert r.status_code == 400 and "scale them down" in r.json()["error"]


def test_top_k_is_a_strict_integer(server):
    url, _ = server
    h = {"Authorization": "Bearer k"}
    r = httpx.post(url + "/predict", params={"top_k": "1_0"}, content=PNG, headers=h)
    assert r.status_code == 422 and "integer" in r.json()["error"]
    r = httpx.post(
        url + "/predict", json={"images": [base64.b64encode(PNG).decode()], "top_k": True}, headers=h
    )
    assert r.status_code == 400 and "top_k" in r.json()["error"]
    r = httpx.post(url + "/predict", params={"top_k": "3"}, content=PNG, headers=h)
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top_k"]) == 3


def test_two_authorization_headers_are_refused_on_every_path(server):
    _, port = server
    body = json.dumps({"images": [base64.b64encode(PNG).decode()]}).encode()
    for content_type, payload in (("image/png", PNG), ("application/json", body)):
        for first, second in ((b"Bearer k", b"Bearer wrong"), (b"Bearer wrong", b"Bearer k")):
            request = (
                b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: %s\r\n"
                b"Authorization: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                % (first, second, content_type.encode(), len(payload))
            )
            code, answer = _status_and_json(_raw(port, request + payload))
            assert code == 400 and "Authorization" in answer["error"], (content_type, answer)


# ---------------------------------------------------------------------------------------------- hot reload


def test_hot_reload_keeps_the_version_a_request_started_with(tmp_path: Path):
    """Reloads every ~1 s while clients post, some of them uploading for 3 s (longer than any fixed grace would
    be): none fails, and slow requests are answered by the version they were routed to before their body."""
    write_version(tmp_path, "tiny", 1)
    with hardened_server(tmp_path, poll_interval_s=0.2, drain_timeout_s=5) as (url, port):
        failures: list[str] = []
        versions: set[int] = set()
        spanned: list[int] = []  # slow requests answered by a version older than the newest at their end
        stop = threading.Event()

        def fast_client() -> None:
            with httpx.Client(base_url=url, timeout=10) as c:
                while not stop.is_set():
                    r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:120]}")
                    else:
                        versions.add(r.json()["version"])

        def slow_client() -> None:
            body = json.dumps(
                {
                    "inputs": [
                        {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [7] * 3072}
                    ]
                }
            ).encode()
            while not stop.is_set():
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(
                        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body)
                    )
                    started_on = max(versions, default=1)
                    for i in range(0, len(body), len(body) // 6 + 1):  # ~3 s per upload, across swaps
                        s.sendall(body[i : i + len(body) // 6 + 1])
                        time.sleep(0.5)
                    response = _read_all(s)
                if not response.startswith(b"HTTP/1.1 200"):
                    failures.append(response[:200].decode("latin-1"))
                elif int(_status_and_json(response)[1]["model_version"]) < max(versions, default=1):
                    spanned.append(started_on)

        threads = [threading.Thread(target=fast_client) for _ in range(4)]
        threads += [threading.Thread(target=slow_client) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for version in range(2, 5):
                time.sleep(1.0)
                write_version(tmp_path, "tiny", version, seed=version)
            deadline = time.monotonic() + 20
            while 4 not in versions and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3.5)  # the slow uploads under way finish
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not failures, failures[:5]
        assert 4 in versions and len(versions) >= 2
        assert spanned, "no slow upload spanned a swap; the test did not test the lease"


# ---------------------------------------------------------------------------------------------- shutdown


def test_sigterm_with_default_settings_answers_every_connection(tmp_path: Path):
    """32 clients, a fresh connection per request, SIGTERM in the middle, default delay and drain: every request
    that reached the socket gets 200 or a JSON 503; the rest are refused at connect time, never dropped."""
    write_version(tmp_path, "tiny", 1)
    port = free_port()
    with service_process(tmp_path, port) as proc:
        url = f"http://127.0.0.1:{port}"
        outcomes: dict[str, int] = {}
        dropped: list[str] = []
        closed_keep_alive = 0

        async def client(stop_at: float) -> None:
            nonlocal closed_keep_alive
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as ac:
                while time.monotonic() < stop_at:  # until the process has gone (then connects are refused)
                    exited = proc.poll() is not None
                    try:
                        r = await ac.post("/predict", content=PNG, headers={"Content-Type": "image/png"})
                    except httpx.ConnectError:
                        outcomes["refused"] = outcomes.get("refused", 0) + 1
                        if exited:
                            return
                        await asyncio.sleep(0.05)
                        continue
                    except httpx.TransportError as err:
                        dropped.append(repr(err))
                        continue
                    assert r.status_code == 200 or (r.status_code == 503 and "error" in r.json()), r.text
                    closed_keep_alive += r.headers.get("connection") == "close"
                    outcomes[str(r.status_code)] = outcomes.get(str(r.status_code), 0) + 1

        async def run() -> None:
            stop_at = time.monotonic() + 60
            tasks = [asyncio.create_task(client(stop_at)) for _ in range(32)]
            await asyncio.sleep(1.5)
            proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks)

        asyncio.run(run())
        assert proc.wait(30) == -signal.SIGTERM
        assert not dropped, dropped[:5]
        assert outcomes.get("200", 0) > 32 and outcomes.get("refused", 0) >= 32, outcomes
        assert closed_keep_alive > 0  # responses during the delay tell keep-alive clients to go


def test_shutdown_answers_a_half_sent_request_and_closes_keep_alive(repo: Path):
    """SIGTERM (delay 1 s): a keep-alive client is told ``Connection: close`` with its next answer; a request
    whose headers were still arriving when the listener closed is read to its end and answered."""
    port = free_port()
    settings = Settings(model_repository=repo, port=port, poll_interval_s=0, log_level="warning")
    app = create_app(settings, fast_path=False)
    server = DrainingServer(server_config(settings, app), app, 1.0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    live = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as keep,
        socket.create_connection(("127.0.0.1", port), timeout=10) as half,
    ):
        keep.sendall(live)
        first = keep.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
        half.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n")
        time.sleep(0.2)
        server.handle_exit(signal.SIGTERM, None)
        assert httpx.get(url + "/health/ready").status_code == 503
        keep.sendall(live)
        during = _read_all(keep)  # answered, then closed by the server
        assert during.startswith(b"HTTP/1.1 200") and b"connection: close" in during.lower()
        time.sleep(1.5)  # the delay is over: the listener is closed
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        half.sendall(b"Content-Length: %d\r\n\r\n" % len(PNG) + PNG)
        answer = _read_all(half)
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower()
    thread.join(15)
    assert not thread.is_alive()


def test_large_images_are_decoded_off_the_event_loop_whatever_their_file_size(repo: Path, monkeypatch):
    """A 2000 x 2000 1-bit PNG is a few kB: the decision to decode inline goes by pixels, not bytes."""
    import service.inference as inference

    threads: list[str] = []
    real = inference.decode_opened

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "decode_opened", recording)
    buf = io.BytesIO()
    Image.new("1", (2000, 2000), 1).save(buf, format="PNG")
    assert len(buf.getvalue()) < 10_000
    with hardened_server(repo) as (url, _):
        for body in (PNG, buf.getvalue()):
            r = httpx.post(url + "/predict", content=body, headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
    small, large = threads
    assert not small.startswith("rescom-decode")  # 32 x 32: decoded inline, a thread hop costs more
    assert large.startswith("rescom-decode")


def test_a_body_still_trickling_after_an_early_answer_is_cut_off(server):
    """401 before the body was read; the client keeps trickling the declared 1 MB: closed at the body timeout."""
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n"
        )
        time.sleep(0.2)
        assert s.recv(65536).startswith(b"HTTP/1.1 401")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - started < 5:
                s.sendall(b"x" * 100)
                time.sleep(0.05)
        assert time.monotonic() - started < 3  # the server closed it after ~0.5 s


# ---------------------------------------------------------------------------------------------- response writes


def _one_response(s: socket.socket) -> tuple[bytes, bytes]:
    """Read one response with a Content-Length from a keep-alive socket: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = s.recv(65536)
        assert part, f"connection closed after {data!r}"
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        part = s.recv(65536)
        assert part, "connection closed inside the body"
        body += part
    return head, body


def test_expect_100_continue_goes_out_before_the_response_head(server):
    """The interim 100 is written before the response starts (service/protocol.py holds only a response's head
    until its body): a client that waits for it before sending the body gets it, then the answer."""
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: image/png\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(PNG)
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(PNG)
        head, body = _one_response(s)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["predictions"]


def test_a_head_answer_and_the_next_request_share_a_connection(server):
    """A HEAD answer has no body write to carry its head: it is still sent at once, and keep-alive goes on."""
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"HEAD /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            part = s.recv(65536)
            assert part, "connection closed without an answer to HEAD"
            head += part
        assert head.startswith(b"HTTP/1.1 ") and head.endswith(b"\r\n\r\n"), head
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        head2, body2 = _one_response(s)
        assert head2.startswith(b"HTTP/1.1 200") and body2
