"""Graceful shutdown of ``python -m service`` under load (a real subprocess, real signals, the slow test model).

What the service does on SIGTERM, and what these tests hold it to:

1. readiness (``/health/ready``, ``/v2/health/ready``) answers 503 at once; liveness stays 200;
2. for ``RESCOM_SHUTDOWN_DELAY_S`` it keeps serving everything else (a request arriving then gets its 200), so
   load balancers can stop routing here before the port closes;
3. then the listener closes: a request on a new connection is refused at the TCP level (never half-answered);
4. requests received before that run to completion (200) for at most ``RESCOM_DRAIN_TIMEOUT_S``; any still
   running then get a clean 503 ``{"error": ...}`` with ``Retry-After`` (never uvicorn's plain-text 500, never a
   dropped connection);
5. the process exits, by re-raising SIGTERM (status -15), within delay + drain timeout + a small margin.

SIGINT, or a second SIGTERM, skips what is left of the delay. ``tests/test_service_reload.py`` has the basic
case (three in-flight requests, SIGTERM, all 200).
"""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from pathlib import Path

import httpx
import pytest
from reliability_helpers import wait_until

from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import write_version
from rescom_dev.prometheus import metric_value
from rescom_dev.servers import free_port, service_process

pytestmark = pytest.mark.timeout(120)
PNG = encode(random_images(1, seed=9)[0])
MARGIN_S = 3.0  # interpreter exit, worker thread joins, a loaded 2-core box


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_version(root, "slow", 1, kind="slow", slow_matmuls=40, slow_dim=512)  # ~0.1-0.4 s per image
    return root


@pytest.fixture(scope="module")
def slower_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_version(
        root, "slow", 1, kind="slow", slow_matmuls=400, slow_dim=512
    )  # 0.35 s (idle) to ~2 s an image
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {"RESCOM_MAX_BATCH_SIZE": "1", "RESCOM_INSTANCES": "1", "RESCOM_MAX_QUEUE_DELAY_MS": "0"}
    # no shutdown delay unless a test sets one: these tests time the drain, which starts after the delay
    return {**env, "RESCOM_SHUTDOWN_DELAY_S": "0", **extra}


async def _predict(ac: httpx.AsyncClient, i: int) -> httpx.Response:
    """Alternate the raw-body fast path and the JSON route (FastAPI), which fail differently when cancelled."""
    if i % 2:
        return await ac.post("/predict", json={"images": [base64.b64encode(PNG).decode()]})
    return await ac.post("/predict", content=PNG, headers={"Content-Type": "image/png"})


async def _queued(ac: httpx.AsyncClient) -> float:
    return metric_value((await ac.get("/metrics")).text, "rescom_queue_depth", model="slow")


async def _wait_queued(ac: httpx.AsyncClient, n: int) -> None:
    deadline = time.monotonic() + 30
    while await _queued(ac) < n:
        assert time.monotonic() < deadline, "requests never queued"
        await asyncio.sleep(0.02)


def _fresh() -> httpx.AsyncClient:
    """A client that opens a new connection for every request (probes what a new client would see)."""
    return httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def test_sigterm_readiness_503_serving_during_delay_then_drain(repo: Path):
    delay, drain = 1.5, 10.0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _env(RESCOM_SHUTDOWN_DELAY_S=str(delay), RESCOM_DRAIN_TIMEOUT_S=str(drain))
    with service_process(repo, port, env) as proc:

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as ac, _fresh() as probe:
                in_flight = [asyncio.ensure_future(_predict(ac, i)) for i in range(4)]
                await _wait_queued(ac, 3)  # one running, three queued
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                await asyncio.sleep(0.3)  # a few uvicorn ticks: the delay is what holds the listener open now
                ready = await probe.get(url + "/health/ready")
                v2_ready = await probe.get(url + "/v2/health/ready")
                live = await probe.get(url + "/health/live")
                # Arrives during the delay, on a new connection: still served.
                during = await probe.post(
                    url + "/predict", content=PNG, headers={"Content-Type": "image/png"}
                )
                await asyncio.sleep(max(0.0, delay + 0.6 - (time.monotonic() - sent)))
                try:
                    after = await probe.get(url + "/health/live")
                    refused = f"answered {after.status_code}"
                except httpx.ConnectError:
                    refused = "refused"
                results = await asyncio.gather(*in_flight)
                return sent, ready, v2_ready, live, during, refused, results

        sent, ready, v2_ready, live, during, refused, results = asyncio.run(scenario())
        proc.wait(timeout=delay + drain + MARGIN_S)
        elapsed = time.monotonic() - sent
        log = proc.stdout.read()

    assert ready.status_code == 503 and ready.json() == {"error": "not ready: shutting down"}
    assert v2_ready.status_code == 503 and live.status_code == 200
    assert during.status_code == 200, during.text
    assert refused == "refused", refused
    assert [r.status_code for r in results] == [200] * 4, [r.text[:100] for r in results]
    assert delay <= elapsed < delay + drain + MARGIN_S
    assert proc.returncode == -signal.SIGTERM
    assert "SIGTERM: readiness is 503; still serving for" in log and "Traceback" not in log, log[-2000:]


def test_requests_that_outlive_the_drain_timeout_get_a_clean_503(slower_repo: Path):
    drain = 0.5
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with service_process(slower_repo, port, _env(RESCOM_DRAIN_TIMEOUT_S=str(drain))) as proc:

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
                in_flight = [asyncio.ensure_future(_predict(ac, i)) for i in range(10)]  # >= 3.5 s of work
                await _wait_queued(ac, 9)  # one running, nine queued
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                return sent, await asyncio.gather(*in_flight, return_exceptions=True)

        sent, results = asyncio.run(scenario())
        proc.wait(timeout=drain + MARGIN_S)
        elapsed = time.monotonic() - sent
        log = proc.stdout.read()

    assert all(isinstance(r, httpx.Response) for r in results), results  # no dropped connection
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 503} and codes.count(503) >= 5, codes  # >= 3.5 s of work, 0.5 s to drain
    for r in results:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1" and "shutting down" in r.json()["error"], r.text
    assert elapsed < drain + 3 + MARGIN_S  # + the batch that was running (it cannot be interrupted)
    assert proc.returncode == -signal.SIGTERM
    assert "Traceback" not in log and "Internal Server Error" not in log, log[-3000:]
    assert log.count("cancelled by the shutdown; answered 503") == codes.count(503)


@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_sigint_or_a_second_sigterm_skips_the_delay(repo: Path, second: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _env(RESCOM_SHUTDOWN_DELAY_S="60", RESCOM_DRAIN_TIMEOUT_S="5")
    with service_process(repo, port, env) as proc:
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(url + "/health/ready").status_code == 503, 10, "readiness 503")
        assert httpx.get(url + "/health/live").status_code == 200  # still serving: the 60 s delay runs
        start = time.monotonic()
        proc.send_signal(getattr(signal, second))
        proc.wait(timeout=5 + MARGIN_S)
        assert time.monotonic() - start < 5
        assert "Traceback" not in proc.stdout.read()
