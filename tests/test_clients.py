"""The ecosystem's own clients against a real server with the bundled digits-LT model, every transport:

- ``tritonclient.http`` and ``tritonclient.grpc``: health, metadata, config, inference with binary tensors,
  for the model and for its version ``1``;
- KServe's ``InferenceRESTClient`` (v2) and ``InferenceGRPCClient``: health, model ready, inference, run in
  ``.venv-kserve`` through tests/kserve_client_check.py (``make kserve-client``; kserve pins other versions).

Every one of the 500 digits-LT test images gets the same label over every transport as from ``POST /predict``
(PNG upload). The server has an API key, so every client also authenticates.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from rescom_dev.servers import free_port, running_server
from service.config import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
REPO = Path(os.environ.get("RESCOM_TEST_MODEL_REPOSITORY", ROOT / "models"))
MODEL = "digits_lt"
KEY = "clients-test-key"
BATCH = 50
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"

if not (REPO / MODEL).is_dir():
    pytest.skip(f"no {MODEL} model in {REPO}", allow_module_level=True)


def auth() -> dict[str, str]:
    return {
        "authorization": f"Bearer {KEY}"
    }  # fresh each call (tritonclient adds to it); gRPC wants lower case


@pytest.fixture(scope="module")
def digits_split() -> tuple[np.ndarray, list[int]]:
    pytest.importorskip("torch")  # the digits-LT split comes from rescom.data; the service does not need it
    pytest.importorskip("sklearn")
    from rescom.data import build_datasets

    test = build_datasets("digits_lt", None).test
    test.transform = None
    pairs = [test[i] for i in range(len(test))]
    images = np.stack([np.asarray(img.convert("RGB")) for img, _ in pairs])  # [N, 32, 32, 3]
    assert images.shape[0] == 500
    return images, [int(label) for _, label in pairs]


@pytest.fixture(scope="module")
def digits(digits_split) -> np.ndarray:
    return digits_split[0]


@pytest.fixture(scope="module")
def server():
    s = Settings(
        model_repository=REPO,
        model=MODEL,
        port=free_port(),
        grpc_port=free_port(),
        poll_interval_s=0,
        log_level="warning",
        api_key=KEY,
    )
    with running_server(s, ready_timeout=120) as url:
        yield url, s.grpc_port


@pytest.fixture(scope="module")
def predict_labels(server, digits) -> list[int]:
    from PIL import Image

    url, _ = server
    labels: list[int] = []
    with httpx.Client(base_url=url, timeout=60, headers=auth()) as c:
        for start in range(0, len(digits), BATCH):
            files = []
            for i, img in enumerate(digits[start : start + BATCH]):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                files.append(("file", (f"{i}.png", buf.getvalue(), "image/png")))
            preds = c.post("/predict", files=files, params={"top_k": 1}).json()["predictions"]
            labels += [p["class_id"] for p in preds]
    return labels


def test_tritonclient_http(server, digits, predict_labels):
    url, _ = server
    client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    assert client.is_server_live() and client.is_server_ready()
    for version in ("", "1"):
        assert client.is_model_ready(MODEL, version, headers=auth())
        meta = client.get_model_metadata(MODEL, version, headers=auth())
        assert meta["inputs"][0]["shape"] == [-1, 32, 32, 3] and meta["versions"] == ["1"]
        config = client.get_model_config(MODEL, version, headers=auth())
        assert config["input"][0]["data_type"] == "TYPE_UINT8" and config["max_batch_size"] >= 1
        labels = []
        for start in range(0, len(digits), BATCH):
            x = digits[start : start + BATCH]
            inp = httpclient.InferInput("images", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x, binary_data=True)
            out = httpclient.InferRequestedOutput("probabilities", binary_data=True)
            result = client.infer(MODEL, [inp], model_version=version, outputs=[out], headers=auth())
            labels += result.as_numpy("probabilities").argmax(axis=1).tolist()
        assert labels == predict_labels
    client.close()


def test_tritonclient_grpc(server, digits, predict_labels):
    _, port = server
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready()
    for version in ("", "1"):
        assert client.is_model_ready(MODEL, version, headers=auth())
        meta = client.get_model_metadata(MODEL, version, headers=auth(), as_json=True)
        assert meta["inputs"][0]["shape"] == ["-1", "32", "32", "3"] and meta["versions"] == ["1"]
        config = client.get_model_config(MODEL, version, headers=auth(), as_json=True)["config"]
        assert config["input"][0]["data_type"] == "TYPE_UINT8" and int(config["max_batch_size"]) >= 1
        labels = []
        for start in range(0, len(digits), BATCH):
            x = digits[start : start + BATCH]
            inp = grpcclient.InferInput("images", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x)
            out = grpcclient.InferRequestedOutput("probabilities")
            result = client.infer(MODEL, [inp], model_version=version, outputs=[out], headers=auth())
            labels += result.as_numpy("probabilities").argmax(axis=1).tolist()
        assert labels == predict_labels
    assert client.get_server_metadata(headers=auth(), as_json=True)["name"] == "rescom"
    client.close()


def test_kserve_rest_and_grpc_clients(server, digits, predict_labels, tmp_path):
    if not KSERVE_PYTHON.exists():
        message = f"no KServe client venv at {KSERVE_PYTHON.parent.parent} (make kserve-client)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    url, port = server
    images = tmp_path / "digits.npy"
    np.save(images, digits)
    script = Path(__file__).with_name("kserve_client_check.py")
    opts = {"http": url, "grpc": f"127.0.0.1:{port}", "model": MODEL, "images": str(images), "key": KEY}
    proc = subprocess.run(
        [str(KSERVE_PYTHON), str(script)],
        input=json.dumps({**opts, "batch": BATCH}),
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": os.environ["PATH"]},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for transport in ("rest", "grpc"):
        r = result[transport]
        assert r["live"] is True and r["ready"] is True and r["model_ready"] is True, (transport, r)
        assert r["labels"] == predict_labels, transport


def test_the_shared_labels_are_the_models_answers(predict_labels, digits_split):
    """The labels every transport agrees on are the model's real answers, not a degenerate constant."""
    truth = np.asarray(digits_split[1])
    assert float(np.mean(np.asarray(predict_labels) == truth)) > 0.8
