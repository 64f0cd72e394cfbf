"""Hot reload, refused versions, startup fallbacks, graceful drain on SIGTERM, the command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import tiny_reference_logits, write_version
from rescom_dev.servers import free_port, local_settings, running_server, service_command

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
PNG = encode(random_images(1, seed=4)[0])


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def served_version(c: httpx.Client) -> int | None:
    return c.get("/v1/models/tiny").json()["version"]


def v2_logits(c: httpx.Client, x: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {"name": "images", "shape": list(x.shape), "datatype": "UINT8", "data": x.ravel().tolist()}
        ],
        "outputs": [{"name": "logits"}],
    }
    out = c.post("/v2/models/tiny/infer", content=json.dumps(body)).json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_hot_reload_swaps_in_v2_and_refuses_a_broken_v3(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="rescom")
    write_version(tmp_path, "tiny", 1, seed=0)
    s = local_settings(tmp_path, poll_interval_s=0.1, log_level="info")
    x = random_images(3, seed=12)
    errors: list[str] = []
    stop = threading.Event()

    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert served_version(c) == 1
        np.testing.assert_allclose(v2_logits(c, x), tiny_reference_logits(x, seed=0), atol=1e-3)

        def hammer():  # traffic during the swap must not see a single error
            with httpx.Client(base_url=url, timeout=30) as hc:
                while not stop.is_set():
                    r = hc.post("/predict", content=PNG, headers={"Content-Type": "image/png"})
                    if r.status_code != 200:
                        errors.append(r.text)

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            write_version(tmp_path, "tiny", 2, seed=1)
            wait_for(lambda: served_version(c) == 2, what="version 2")
            time.sleep(0.3)
        finally:
            stop.set()
            thread.join(10)
        assert errors == []
        np.testing.assert_allclose(v2_logits(c, x), tiny_reference_logits(x, seed=1), atol=1e-3)
        r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"}, params={"version": 2})
        assert r.status_code == 200 and r.json()["version"] == 2
        assert (
            c.post(
                "/predict", content=PNG, headers={"Content-Type": "image/png"}, params={"version": 1}
            ).status_code
            == 404
        )

        write_version(tmp_path, "tiny", 3, seed=2, broken="shape")
        wait_for(
            lambda: 3 in c.get("/v1/models/tiny").json()["refused_versions"], what="refusal of version 3"
        )
        write_version(tmp_path, "tiny", 4, broken="onnx")
        wait_for(
            lambda: 4 in c.get("/v1/models/tiny").json()["refused_versions"], what="refusal of version 4"
        )
        assert served_version(c) == 2
        assert c.get("/health/ready").status_code == 200
        np.testing.assert_allclose(v2_logits(c, x), tiny_reference_logits(x, seed=1), atol=1e-3)
        text = c.get("/metrics").text
        assert 'rescom_model_info{model="tiny",provider="CPUExecutionProvider",version="2"} 1.0' in text
        assert 'version="1"' not in text.split("rescom_model_info", 1)[1].split("# HELP", 1)[0]

    refusals = [r.getMessage() for r in caplog.records if "refusing model tiny version" in r.getMessage()]
    assert any(
        "version 3" in m and "32 in the graph, 64 in rescom.json" in m and "version 2 keeps serving" in m
        for m in refusals
    )
    assert any("version 4" in m and "onnxruntime cannot load" in m for m in refusals)
    assert not any(str(tmp_path) in m for m in refusals)  # paths in log lines are relative to the repository


def test_startup_falls_back_to_the_newest_loadable_version(tmp_path: Path):
    write_version(tmp_path, "tiny", 1)
    write_version(tmp_path, "tiny", 2, broken="onnx")
    (tmp_path / "tiny" / "07").mkdir()  # not a version (leading zero), ignored like Triton does
    write_version(tmp_path, "other", 1, broken="shape")
    s = local_settings(tmp_path)
    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["tiny"]["version"] == 1 and models["tiny"]["refused_versions"] == [2]
        assert not models["other"]["ready"] and models["other"]["refused_versions"] == [1]
        r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"}, params={"model": "other"})
        assert r.status_code == 503 and "not loaded" in r.json()["error"]
        r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"})
        assert r.status_code == 200  # one model served: no name needed


def test_several_models_need_a_name(tmp_path: Path):
    write_version(tmp_path, "a", 1)
    write_version(tmp_path, "b", 1, seed=3)
    s = local_settings(tmp_path)
    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"})
        assert r.status_code == 400 and "model=NAME" in r.json()["error"]
        assert (
            c.post(
                "/predict", content=PNG, headers={"Content-Type": "image/png"}, params={"model": "b"}
            ).json()["model"]
            == "b"
        )


def _serve(repo: Path, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        service_command(repo, port, *extra),
        cwd=ROOT,
        env={**os.environ, "RESCOM_LOG_LEVEL": "warning", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path: Path):
    write_version(tmp_path, "slow", 1, kind="slow", slow_matmuls=40, slow_dim=512)
    port = free_port()
    proc = _serve(
        tmp_path,
        port,
        env={"RESCOM_DRAIN_TIMEOUT_S": "10", "RESCOM_MAX_BATCH_SIZE": "1", "RESCOM_POLL_INTERVAL_S": "0"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), timeout=60, what="server ready")
        results: list[int] = []

        def call():
            with httpx.Client(timeout=30) as c:
                results.append(
                    c.post(url + "/predict", content=PNG, headers={"Content-Type": "image/png"}).status_code
                )

        threads = [threading.Thread(target=call) for _ in range(3)]  # 3 batches of 1: over a second of work
        for t in threads:
            t.start()
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        proc.wait(timeout=30)
        assert time.monotonic() - sent < 12
        assert results == [200, 200, 200]
        log = proc.stdout.read()
        assert "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_cli_rejects_bad_settings_clearly(tmp_path: Path):
    proc = _serve(tmp_path / "missing", free_port())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "not a directory" in out and "Traceback" not in out
    proc = _serve(tmp_path, free_port(), env={"RESCOM_BATCH_SIZES": "1,two"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "batch_sizes" in out


def test_empty_repository_fails_startup_with_a_reason(tmp_path: Path):
    proc = _serve(tmp_path, free_port())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "holds no model folder" in out


def test_service_imports_no_torch():
    code = (
        "import sys, pkgutil, importlib, service\n"
        "for m in pkgutil.walk_packages(service.__path__, 'service.'):\n"
        "    importlib.import_module(m.name)\n"
        "import service.main\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'rescom.models',"
        " 'rescom.losses', 'rescom.data', 'training', 'export')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
