"""v2 health and metadata bodies against the Open Inference Protocol definitions vendored in service/protocols/.

- REST bodies are validated with the JSON schemas of ``open_inference_rest.yaml`` (metadata, inference, errors).
- The health bodies (``{"live": true}``, ``{"ready": true}``, model ready), which the REST OpenAPI file leaves
  without a schema, are parsed strictly into the messages of ``grpc_predict_v2.proto`` (an unknown or mistyped
  field fails), the definition KServe's clients read them with.
- gRPC answers are checked field by field against the same HTTP bodies, so both transports say the same thing.
- The vendored descriptor set is what protoc makes of the vendored ``.proto``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import jsonschema_rs
import numpy as np
import pytest
import yaml
from google.protobuf import json_format
from starlette.testclient import TestClient

from rescom_dev.images import random_images
from rescom_dev.onnx_models import write_version
from rescom_dev.servers import free_port, running_server
from service.config import Settings
from service.grpc_messages import DESCRIPTOR_FILE, PROTO_FILE, SERVICE, TRITON_DESCRIPTOR_FILE, message_class
from service.main import create_app

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((ROOT / "service" / "protocols" / "open_inference_rest.yaml").read_text())


def assert_schema(body: Any, name: str) -> None:
    """Validate ``body`` against ``#/components/schemas/<name>`` of the vendored OpenAPI file."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    jsonschema_rs.Draft4Validator(schema).validate(body)


def assert_message(body: dict[str, Any], message: str) -> Any:
    """Parse ``body`` strictly (no unknown fields, right types) into ``inference.<message>``."""
    return json_format.ParseDict(body, message_class(message)())


def grpc_call(port: int, method: str, **fields: Any) -> Any:
    """One unary call of ``inference.GRPCInferenceService`` with the vendored messages."""
    m = SERVICE.methods_by_name[method]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE.full_name}/{method}",
            request_serializer=message_class(m.input_type.name).SerializeToString,
            response_deserializer=message_class(m.output_type.name).FromString,
        )
        return call(message_class(m.input_type.name)(**fields), timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("models")
    write_version(repo, "tiny", 1)
    s = Settings(
        model_repository=repo, port=free_port(), grpc_port=free_port(), poll_interval_s=0, log_level="warning"
    )
    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, s.grpc_port


def test_health_bodies_are_the_protocols(server):
    client, port = server
    live = client.get("/v2/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}
    assert assert_message(live.json(), "ServerLiveResponse").live
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert assert_message(ready.json(), "ServerReadyResponse").ready
    for path in ("/v2/models/tiny/ready", "/v2/models/tiny/versions/1/ready"):
        body = client.get(path).json()
        assert body == {"name": "tiny", "ready": True}
        assert assert_message({"ready": body["ready"]}, "ModelReadyResponse").ready
    assert grpc_call(port, "ServerLive").live and grpc_call(port, "ServerReady").ready
    assert grpc_call(port, "ModelReady", name="tiny").ready
    assert grpc_call(port, "ModelReady", name="tiny", version="1").ready


def test_metadata_bodies_match_the_openapi_schemas_and_grpc(server):
    client, port = server
    for path in ("/v2", "/v2/"):
        body = client.get(path).json()
        assert_schema(body, "metadata_server_response")
        assert body == json_format.MessageToDict(grpc_call(port, "ServerMetadata"))
    for path, version in (("/v2/models/tiny", ""), ("/v2/models/tiny/versions/1", "1")):
        body = client.get(path).json()
        assert_schema(body, "metadata_model_response")
        parsed = assert_message(body, "ModelMetadataResponse")
        assert parsed == grpc_call(port, "ModelMetadata", name="tiny", version=version)
        assert body["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]


def test_inference_and_error_bodies_match_the_openapi_schemas(server):
    client, _ = server
    x = random_images(2)
    request = {"id": "42", "inputs": [{"name": "images", "shape": [2, 32, 32, 3], "datatype": "UINT8"}]}
    request["inputs"][0]["data"] = x.ravel().tolist()
    assert_schema(request, "inference_request")
    response = client.post("/v2/models/tiny/infer", json=request)
    assert response.status_code == 200
    body = response.json()
    assert_schema(body, "inference_response")
    assert body["id"] == "42" and [o["name"] for o in body["outputs"]] == ["logits", "probabilities"]
    assert np.asarray(body["outputs"][0]["data"]).shape == (2 * 10,)
    bad = client.post("/v2/models/tiny/infer", json={"inputs": []})
    assert bad.status_code == 400
    assert_schema(bad.json(), "inference_error_response")
    missing = client.get("/v2/models/nope")
    assert missing.status_code == 404
    assert_schema(missing.json(), "metadata_model_error_response")
    with pytest.raises(grpc.RpcError) as err:
        grpc_call(port=server[1], method="ModelMetadata", name="nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_readiness_bodies_while_not_ready(tmp_path):
    write_version(tmp_path, "tiny", 1, broken="onnx")  # the only model cannot load: never ready
    s = Settings(model_repository=tmp_path, port=free_port(), poll_interval_s=0, log_level="warning")
    with TestClient(create_app(s)) as client:
        for _ in range(200):
            if client.get("/health/ready").json().get("error", "").startswith("not ready: no model"):
                break
            time.sleep(0.05)
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        assert not assert_message(ready.json(), "ServerReadyResponse").ready
        assert client.get("/v2/health/live").json() == {"live": True}


def test_vendored_descriptor_set_is_the_vendored_proto(tmp_path):
    """``make grpc-descriptors`` output equals the committed file (protoc from the KServe client venv)."""
    protoc_python = ROOT / ".venv-kserve" / "bin" / "python"
    if not protoc_python.exists():
        pytest.skip("the KServe client venv (make kserve-client) is not built")
    out = tmp_path / "v2.desc"
    subprocess.run(
        [str(protoc_python), "-m", "grpc_tools.protoc", f"-I{PROTO_FILE.parent}", f"--descriptor_set_out={out}",
         PROTO_FILE.name],
        check=True,
    )  # fmt: skip
    assert out.read_bytes() == DESCRIPTOR_FILE.read_bytes()


def test_vendored_triton_descriptor_set_is_tritonclients(tmp_path):
    """``scripts/triton_descriptors.py`` (from the installed tritonclient) gives the committed file."""
    pytest.importorskip("tritonclient.grpc")
    out = tmp_path / "triton.desc"
    script = ROOT / "scripts" / "triton_descriptors.py"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == TRITON_DESCRIPTOR_FILE.read_bytes()
