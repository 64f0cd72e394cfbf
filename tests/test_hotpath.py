"""The protocol-level ``POST /predict`` (``service.hotpath``) against the ASGI path, over real sockets.

Two real servers on one model repository: one answers raw-body ``POST /predict`` from the connection protocol
(the default), the other with it off (``protocol_fast_path=False``: uvicorn's ASGI cycle and the ASGI fast path).
The same bytes sent to both must come back as the same status, headers and body, for answers and for every
error; pipelining, HTTP/1.0, the fallbacks to a task (large images, the adaptive prior) and the metrics are
checked on the protocol path itself.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import write_version
from tests.test_hostile_clients import _read_all, hardened_server

pytestmark = pytest.mark.timeout(120)
PNG = encode(random_images(1, seed=11)[0])
LARGE_PNG = encode(np.full((200, 200, 3), 77, dtype=np.uint8))  # 200 x 200 pixels > the inline limit: a task
SETTINGS = {"api_key": "k", "max_body_bytes": 50_000, "keep_alive_timeout_s": 2.0}
AUTH = b"Authorization: Bearer k\r\n"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    repo = tmp_path_factory.mktemp("models")
    write_version(repo, "tiny", 1)
    with (
        hardened_server(repo, **SETTINGS) as (_, hot),
        hardened_server(repo, protocol_fast_path=False, **SETTINGS) as (_, asgi),
    ):
        yield {"hot": hot, "asgi": asgi}


def _post(target: str, body: bytes, headers: bytes = AUTH + b"Content-Type: image/png\r\n") -> bytes:
    return (
        b"POST "
        + target.encode()
        + b" HTTP/1.1\r\nHost: t\r\n"
        + headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def _exchange(port: int, request: bytes, responses: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``request`` on one connection and read ``responses`` whole responses (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        buffer, out = b"", []
        while len(out) < responses:
            while b"\r\n\r\n" not in buffer:
                part = s.recv(65536)
                assert part, f"connection closed after {len(out)} responses"
                buffer += part
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            length = int(headers["content-length"])
            while len(buffer) < length:
                part = s.recv(65536)
                assert part, "connection closed inside a body"
                buffer += part
            out.append((int(lines[0].split(" ")[1]), headers, buffer[:length]))
            buffer = buffer[length:]
        return out


def _comparable(response: tuple[int, dict[str, str], bytes]) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = response
    return status, {k: v for k, v in headers.items() if k != "date"}, body


@pytest.mark.parametrize(
    "target",
    [
        "/predict",
        "/predict?top_k=3",
        "/predict?prior=train&temperature=false",
        "/predict?temperature=0.5",
        "/predict?prior=" + quote('{"0": 1, "3": 5}'),
        "/predict?model=tiny&version=1",
    ],
)
def test_answers_equal_the_asgi_path(servers, target):
    hot, asgi = (_exchange(servers[k], _post(target, PNG))[0] for k in ("hot", "asgi"))
    assert hot[0] == 200
    assert _comparable(hot) == _comparable(asgi)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (_post("/predict?top_k=x", PNG), 422),
        (_post("/predict?top_k=0", PNG), 422),
        (_post("/predict?colour=red", PNG), 400),
        (_post("/predict?model=nope", PNG), 404),
        (_post("/predict?version=7", PNG), 404),
        (_post("/predict?prior=bogus", PNG), 422),
        (_post("/predict", b""), 400),
        (_post("/predict", b"not an image at all"), 422),
        (_post("/predict", b"\x89PNG\r\n\x1a\n" + b"\0" * 40), 422),
        (_post("/predict", b"x" * 60_000), 413),
        (_post("/predict", PNG, b"Content-Type: image/png\r\n"), 401),
        (_post("/predict", PNG, b"Authorization: Bearer wrong\r\nContent-Type: image/png\r\n"), 401),
        (_post("/predict", PNG, AUTH + AUTH + b"Content-Type: image/png\r\n"), 400),
    ],
)
def test_errors_equal_the_asgi_path(servers, request_bytes, status):
    hot, asgi = (_exchange(servers[k], request_bytes)[0] for k in ("hot", "asgi"))
    assert hot[0] == status, hot
    assert _comparable(hot) == _comparable(asgi)
    assert json.loads(hot[2])["error"]


def test_large_images_and_the_adaptive_prior_continue_in_a_task(servers):
    hot, asgi = (_exchange(servers[k], _post("/predict", LARGE_PNG))[0] for k in ("hot", "asgi"))
    assert hot[0] == 200 and _comparable(hot) == _comparable(asgi)
    ((status, _, body),) = _exchange(servers["hot"], _post("/predict?prior=adaptive&top_k=2", PNG))
    answer = json.loads(body)
    assert status == 200 and answer["calibration"]["prior"] == "adaptive"
    assert len(answer["predictions"][0]["top_k"]) == 2
    assert sum(p["score"] for p in answer["predictions"][0]["top_k"]) <= 1.0 + 1e-9


def test_pipelined_requests_are_answered_in_order_on_one_connection(servers):
    request = (
        _post("/predict?top_k=1", PNG)
        + b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n"
        + _post("/predict?top_k=x", PNG)
        + _post("/predict?top_k=2", encode(random_images(1, seed=13)[0]))
    )
    answers = _exchange(servers["hot"], request, responses=4)
    assert [status for status, _, _ in answers] == [200, 200, 422, 200]
    assert len(json.loads(answers[0][2])["predictions"][0]["top_k"]) == 1
    assert json.loads(answers[1][2]) == {"status": "live"}
    assert len(json.loads(answers[3][2])["predictions"][0]["top_k"]) == 2
    assert all("connection" not in headers for _, headers, _ in answers)


def test_http_1_0_gets_connection_close(servers):
    request = _post("/predict", PNG).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with socket.create_connection(("127.0.0.1", servers["hot"]), timeout=10) as s:
        s.sendall(request)
        response = _read_all(s)  # the server closes the connection
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
    assert json.loads(body)["predictions"]


def test_answers_are_counted_in_the_metrics(servers):
    url = f"http://127.0.0.1:{servers['hot']}"

    def count(status: str) -> float:
        text = httpx.get(url + "/metrics", headers={"Authorization": "Bearer k"}).text
        pattern = rf'rescom_requests_total\{{[^}}]*route="/predict"[^}}]*status="{status}"[^}}]*\}} (\S+)'
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    before_ok, before_bad = count("200"), count("422")
    _exchange(servers["hot"], _post("/predict", PNG) + _post("/predict?top_k=x", PNG), responses=2)
    assert count("200") == before_ok + 1
    assert count("422") == before_bad + 1


def test_single_raw_answers_equal_one_batched_json_request(servers):
    images = random_images(4, seed=21)
    answers = [
        json.loads(_exchange(servers["hot"], _post("/predict?temperature=false&top_k=10", encode(x)))[0][2])
        for x in images
    ]
    body = {
        "images": [base64.b64encode(encode(x)).decode() for x in images],
        "temperature": False,
        "top_k": 10,
    }
    reference = httpx.post(
        f"http://127.0.0.1:{servers['asgi']}/predict", json=body, headers={"Authorization": "Bearer k"}
    ).json()
    for one, ref in zip(answers, reference["predictions"], strict=True):
        got = {p["class_id"]: p["score"] for p in one["predictions"][0]["top_k"]}
        want = {p["class_id"]: p["score"] for p in ref["top_k"]}
        assert one["predictions"][0]["class_id"] == ref["class_id"]
        assert got.keys() == want.keys()
        # ORT's float32 sums differ slightly between a batch of 1 and a batch of 4
        np.testing.assert_allclose([got[c] for c in want], list(want.values()), rtol=0, atol=1e-5)


def test_triton_statistics_count_raw_requests_as_the_asgi_path_does(servers):
    def counts(port: int) -> tuple[int, int]:
        stats = httpx.get(
            f"http://127.0.0.1:{port}/v2/models/tiny/stats", headers={"Authorization": "Bearer k"}
        ).json()["model_stats"][0]["inference_stats"]
        return stats["success"]["count"], stats["fail"]["count"]

    for port in servers.values():
        ok0, fail0 = counts(port)
        request = (
            _post("/predict", PNG)
            + _post("/predict", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
            + _post("/predict", PNG)
        )
        assert [status for status, _, _ in _exchange(port, request, responses=3)] == [200, 422, 200]
        _exchange(port, _post("/predict?top_k=x", PNG))  # refused before admission: not a model request
        assert counts(port) == (ok0 + 2, fail0 + 1)
