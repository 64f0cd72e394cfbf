"""The KServe v2 gRPC endpoint shares the HTTP service's batcher, calibration, auth, limits, metrics and drain.

Real server (uvicorn + grpc.aio in one event loop) over real sockets, called with the vendored messages.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from rescom.calibration import calibrated_probs
from rescom_dev.images import random_images
from rescom_dev.onnx_models import TEMPERATURE, tiny_reference_logits, write_version
from rescom_dev.prometheus import metric_value
from rescom_dev.servers import free_port, running_server
from service.config import Settings
from service.grpc_messages import SERVICE, message_class
from service.main import begin_drain, create_app

pytestmark = pytest.mark.timeout(120)
KEY = "s3cret-grpc-key"


def call(port: int, method: str, request: Any = None, metadata: Any = None, **fields: Any) -> Any:
    m = SERVICE.methods_by_name[method]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_unary(
            f"/{SERVICE.full_name}/{method}",
            request_serializer=message_class(m.input_type.name).SerializeToString,
            response_deserializer=message_class(m.output_type.name).FromString,
        )
        msg = request if request is not None else message_class(m.input_type.name)(**fields)
        return stub(msg, timeout=30, metadata=metadata)


def infer_request(x: np.ndarray, raw: bool, **params: Any) -> Any:
    req = message_class("ModelInferRequest")(model_name="tiny", id="r1")
    tensor = req.inputs.add(name="images", datatype="UINT8", shape=list(x.shape))
    if raw:
        req.raw_input_contents.append(x.tobytes())
    else:
        tensor.contents.uint_contents.extend(x.ravel().tolist())
    for key, value in params.items():
        param = req.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        else:
            param.string_param = value
    return req


def outputs(response: Any) -> dict[str, np.ndarray]:
    result = {}
    for i, out in enumerate(response.outputs):
        if response.raw_output_contents:
            arr = np.frombuffer(response.raw_output_contents[i], dtype="<f4")
        else:
            arr = np.asarray(out.contents.fp32_contents, dtype=np.float32)
        result[out.name] = arr.reshape(list(out.shape))
    return result


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repo: Path = tmp_path_factory.mktemp("models")
    write_version(repo, "tiny", 1)
    s = Settings(
        model_repository=repo,
        port=free_port(),
        grpc_port=free_port(),
        poll_interval_s=0,
        log_level="warning",
        api_key=KEY,
        max_images_per_request=8,
        max_body_bytes=64 * 1024,
    )
    with running_server(s) as url:
        yield url, s.grpc_port


AUTH = (("authorization", f"Bearer {KEY}"),)


def test_raw_and_typed_inputs_give_the_http_answer(server):
    url, port = server
    x = random_images(4, seed=3)
    raw = call(port, "ModelInfer", infer_request(x, raw=True, prior="train"), AUTH)
    typed = call(port, "ModelInfer", infer_request(x, raw=False, prior="train"), AUTH)
    assert raw.raw_output_contents and not typed.raw_output_contents  # the answer follows the request's form
    assert raw.id == typed.id == "r1" and raw.model_version == "1"
    a, b = outputs(raw), outputs(typed)
    expected = tiny_reference_logits(x)
    np.testing.assert_allclose(a["logits"], expected, atol=1e-4)
    np.testing.assert_array_equal(a["logits"], b["logits"])
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])
    body = {
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": list(x.shape), "data": x.ravel().tolist()}
        ],
        "parameters": {"prior": "train"},
    }
    http = httpx.post(
        url + "/v2/models/tiny/infer", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ).json()
    http_probs = np.asarray(http["outputs"][1]["data"], np.float32).reshape(4, 10)
    np.testing.assert_allclose(a["probabilities"], http_probs, atol=1e-6)


def test_calibration_parameters_and_classification(server):
    _, port = server
    x = random_images(3, seed=5)
    req = infer_request(x, raw=True, temperature="false")
    out = req.outputs.add(name="probabilities")
    out.parameters["classification"].int64_param = 2
    response = call(port, "ModelInfer", req, AUTH)
    assert [o.name for o in response.outputs] == ["probabilities"]
    assert response.outputs[0].datatype == "BYTES" and list(response.outputs[0].shape) == [3, 2]
    blob = response.raw_output_contents[0]
    strings, pos = [], 0
    while pos < len(blob):
        n = int.from_bytes(blob[pos : pos + 4], "little")
        strings.append(blob[pos + 4 : pos + 4 + n].decode())
        pos += 4 + n
    probs = calibrated_probs(tiny_reference_logits(x), temperature=1.0)  # temperature=false: raw logits
    top = np.argsort(-probs, axis=1)[:, :2]
    assert [int(s.split(":")[1]) for s in strings] == top.ravel().tolist()
    fitted = outputs(call(port, "ModelInfer", infer_request(x, raw=True), AUTH))["probabilities"]
    np.testing.assert_allclose(fitted, calibrated_probs(tiny_reference_logits(x), TEMPERATURE), atol=1e-5)


def test_auth_is_the_http_api_key(server):
    _, port = server
    x = random_images(1)
    for metadata in (None, (("authorization", "Bearer wrong"),)):
        with pytest.raises(grpc.RpcError) as err:
            call(port, "ModelInfer", infer_request(x, raw=True), metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in err.value.details()
        with pytest.raises(grpc.RpcError):
            call(port, "ModelMetadata", metadata=metadata, name="tiny")
    assert call(port, "ServerLive").live and call(port, "ServerReady").ready  # probes stay open, as over HTTP
    assert call(port, "ModelMetadata", metadata=AUTH, name="tiny").name == "tiny"


def test_limits_and_errors(server):
    _, port = server
    cases = [
        (infer_request(random_images(9), raw=True), grpc.StatusCode.RESOURCE_EXHAUSTED),  # > 8 images
        (infer_request(random_images(1)[:, :16], raw=True), grpc.StatusCode.INVALID_ARGUMENT),  # wrong shape
        (infer_request(random_images(1), raw=True, prior="nonsense"), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    bad_raw = infer_request(random_images(1), raw=True)
    bad_raw.raw_input_contents[0] = b"\x00" * 10
    cases.append((bad_raw, grpc.StatusCode.INVALID_ARGUMENT))
    too_big = infer_request(random_images(1), raw=True)
    too_big.raw_input_contents[0] = b"\x00" * 70_000  # the message exceeds max_body_bytes (64 KiB)
    cases.append((too_big, grpc.StatusCode.RESOURCE_EXHAUSTED))
    unknown = infer_request(random_images(1), raw=True)
    unknown.model_name = "nope"
    cases.append((unknown, grpc.StatusCode.NOT_FOUND))
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            call(port, "ModelInfer", request, AUTH)
        assert err.value.code() == code, (code, err.value.details())
        assert "Traceback" not in (err.value.details() or "")


def test_grpc_calls_are_in_the_metrics(server):
    url, port = server
    call(port, "ModelInfer", infer_request(random_images(2), raw=True), AUTH)
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert metric_value(text, "rescom_requests_total", route=route, method="GRPC", status="OK") >= 1
    assert metric_value(text, "rescom_requests_total", route=route, status="UNAUTHENTICATED") >= 0
    assert metric_value(text, "rescom_images_total", model="tiny") >= 2  # the shared batcher ran them


def test_grpc_is_off_by_default(tmp_path):
    write_version(tmp_path, "tiny", 1)
    s = Settings(model_repository=tmp_path, port=free_port(), poll_interval_s=0, log_level="warning")
    assert s.grpc_port is None
    port = free_port()
    with running_server(s):
        with pytest.raises(grpc.RpcError) as err:
            call(port, "ServerLive")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_shutdown_drains_running_calls_and_reports_not_ready(tmp_path):
    # ~1 s per call on an idle 2-core machine (0.17 s with 100 matmuls was too quick to still be running at 0.3 s)
    write_version(tmp_path, "slow", 1, kind="slow", slow_matmuls=600, slow_dim=512)
    s = Settings(
        model_repository=tmp_path,
        port=free_port(),
        grpc_port=free_port(),
        poll_interval_s=0,
        log_level="warning",
        drain_timeout_s=60,
        batch_sizes=[1],
        max_batch_size=1,
    )
    results: list[Any] = []
    request = infer_request(random_images(1), raw=True)
    request.model_name = "slow"
    app = create_app(s)
    with running_server(s, app):
        worker = threading.Thread(target=lambda: results.append(call(s.grpc_port, "ModelInfer", request)))
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive()  # the call is still running when the shutdown starts
        begin_drain(app)  # what SIGTERM does first
        assert not call(s.grpc_port, "ServerReady").ready
        assert not call(s.grpc_port, "ModelReady", name="slow").ready
    worker.join(90)
    assert len(results) == 1 and results[0].model_name == "slow"  # finished, not cut off
    with pytest.raises(grpc.RpcError) as err:
        call(s.grpc_port, "ServerReady")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the listener is gone
