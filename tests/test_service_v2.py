"""KServe v2 with the stock ``tritonclient[http]`` client, unchanged (binary and JSON tensors, classification)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from rescom.calibration import calibrated_probs, prior_from_counts
from rescom_dev.images import random_images
from rescom_dev.onnx_models import CLASS_COUNTS, TEMPERATURE, tiny_reference_logits
from rescom_dev.onnx_models import write_version as write_model
from rescom_dev.prometheus import wait_metric
from rescom_dev.servers import local_settings, running_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory):
    repo: Path = tmp_path_factory.mktemp("models")
    write_model(repo, "tiny", 1)
    settings = local_settings(repo)
    with running_server(settings) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)
        yield client
        client.close()


def images_input(x: np.ndarray, binary: bool) -> httpclient.InferInput:
    inp = httpclient.InferInput("images", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def test_health_metadata_and_config(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tiny") and triton.is_model_ready("tiny", "1")
    assert not triton.is_model_ready("tiny", "2") and not triton.is_model_ready("nope")
    server = triton.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"] and "classification" in server["extensions"]
    meta = triton.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"logits": [-1, 10], "probabilities": [-1, 10]}
    assert triton.get_model_metadata("tiny", "1")["versions"] == ["1"]
    config = triton.get_model_config("tiny")
    assert config["max_batch_size"] >= 1 and config["input"][0]["format"] == "FORMAT_NHWC"
    assert config["input"][0]["dims"] == [32, 32, 3] and config["output"][0]["dims"] == [10]
    assert float(config["parameters"]["temperature"]["string_value"]) == TEMPERATURE


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_round_trip(triton, binary: bool):
    x = random_images(5, seed=7)
    result = triton.infer("tiny", [images_input(x, binary)], request_id="req-42")
    logits = result.as_numpy("logits")
    probs = result.as_numpy("probabilities")
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, tiny_reference_logits(x), atol=1e-3)
    np.testing.assert_allclose(probs, calibrated_probs(logits, TEMPERATURE), atol=1e-6)
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_version"] == "1"


def test_requested_outputs_json_and_classification(triton):
    x = random_images(3, seed=8)
    outputs = [
        httpclient.InferRequestedOutput("logits", binary_data=False),
        httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=3),
    ]
    result = triton.infer(
        "tiny",
        [images_input(x, True)],
        outputs=outputs,
        model_version="1",
        parameters={"prior": "train", "temperature": 2.0},
    )
    logits = result.as_numpy("logits")
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 3)
    expected = calibrated_probs(logits, 2.0, prior_from_counts(CLASS_COUNTS))
    for row, exp in zip(top, expected, strict=True):
        parsed = [entry.decode().split(":") for entry in row]
        indices = [int(i) for _, i, _ in parsed]
        assert indices == list(np.argsort(-exp)[:3])
        np.testing.assert_allclose([float(v) for v, _, _ in parsed], np.sort(exp)[::-1][:3], atol=1e-5)
        assert [label for _, _, label in parsed] == [str(i) for i in indices]


def test_custom_prior_parameter(triton):
    x = random_images(2, seed=9)
    result = triton.infer("tiny", [images_input(x, True)], parameters={"prior": '{"2": 1, "7": 3}'})
    expected = calibrated_probs(
        result.as_numpy("logits"), TEMPERATURE, np.eye(10)[2] * 0.25 + np.eye(10)[7] * 0.75
    )
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)


def test_errors_are_reported_through_the_client(triton):
    x = random_images(1)
    with pytest.raises(InferenceServerException) as err:
        triton.infer("nope", [images_input(x, True)])
    assert err.value.status() == "404" and "unknown model" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        triton.infer("tiny", [images_input(x, True)], model_version="3")
    assert err.value.status() == "404"
    wrong = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(InferenceServerException) as err:
        triton.infer("tiny", [images_input(wrong, True)])
    assert err.value.status() == "400" and "[n, 32, 32, 3]" in err.value.message()
    floats = httpclient.InferInput("images", [1, 32, 32, 3], "FP32")
    floats.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(InferenceServerException) as err:
        triton.infer("tiny", [floats])
    assert err.value.status() == "400" and "UINT8" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        triton.infer("tiny", [images_input(x, True)], outputs=[httpclient.InferRequestedOutput("features")])
    assert err.value.status() == "400" and "unknown output" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        triton.infer("tiny", [images_input(x, True)], parameters={"prior": "{bad"})
    assert err.value.status() == "422"


def test_raw_binary_gzip_and_timeout_parameter(tmp_path: Path):
    import gzip
    import json

    import httpx

    write_model(tmp_path, "tiny", 1)
    s = local_settings(tmp_path)
    x = random_images(2, seed=21)
    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as c:
        # Raw binary request: Inference-Header-Content-Length 0, the body is one image; all outputs binary.
        r = c.post(
            "/v2/models/tiny/infer", content=x[0].tobytes(), headers={"Inference-Header-Content-Length": "0"}
        )
        assert r.status_code == 200, r.text
        n = int(r.headers["Inference-Header-Content-Length"])
        head = json.loads(r.content[:n])
        size = head["outputs"][0]["parameters"]["binary_data_size"]
        logits = np.frombuffer(r.content[n : n + size], "<f4").reshape(head["outputs"][0]["shape"])
        np.testing.assert_allclose(logits, tiny_reference_logits(x[:1]), atol=1e-3)
        # gzip-compressed JSON request.
        body = {
            "id": "z",
            "inputs": [
                {"name": "images", "shape": [2, 32, 32, 3], "datatype": "UINT8", "data": x.ravel().tolist()}
            ],
            "outputs": [{"name": "logits"}],
        }
        r = c.post(
            "/v2/models/tiny/infer",
            content=gzip.compress(json.dumps(body).encode()),
            headers={"Content-Encoding": "gzip"},
        )
        assert r.status_code == 200 and r.json()["id"] == "z"
        np.testing.assert_allclose(
            np.reshape(r.json()["outputs"][0]["data"], (2, 10)), tiny_reference_logits(x), atol=1e-3
        )
        # Malformed framing.
        r = c.post("/v2/models/tiny/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"})
        assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
        r = c.post("/v2/models/tiny/infer", content=b"\x00\x01", headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and "gzip" in r.json()["error"]
        body["parameters"] = {"timeout": -5}
        assert c.post("/v2/models/tiny/infer", content=json.dumps(body)).status_code == 400


def test_timeout_parameter_expires_in_the_queue(tmp_path: Path):
    import asyncio

    import httpx

    write_model(
        tmp_path, "slow", 1, kind="slow", slow_matmuls=600, slow_dim=512
    )  # ~0.4 s a call: outlasts the 50 ms deadline
    s = local_settings(tmp_path, max_batch_size=1, instances=1, max_queue_delay_ms=0)
    x = random_images(1)
    body = {
        "inputs": [
            {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": x.ravel().tolist()}
        ]
    }
    with running_server(s) as url:

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
                busy = asyncio.ensure_future(ac.post("/v2/models/slow/infer", json=body))
                await wait_metric(ac, "rescom_queue_duration_seconds_count", 1, model="slow")  # model busy
                late = await ac.post(
                    "/v2/models/slow/infer", json={**body, "parameters": {"timeout": 50_000}}
                )
                return await busy, late

        busy, late = asyncio.run(scenario())
        assert busy.status_code == 200
        assert late.status_code == 504 and "0.05 s" in late.json()["error"]
