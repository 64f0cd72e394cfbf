"""Triton's statistics and model repository extensions, called with the stock ``tritonclient.http`` client."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from rescom_dev.images import random_images
from rescom_dev.onnx_models import write_version
from rescom_dev.servers import free_port, running_server
from service.config import Settings
from service.grpc_messages import triton_message_class

pytestmark = pytest.mark.timeout(120)
KEY = "triton-ext-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def make_repo(root: Path) -> Path:
    write_version(root, "tiny", 1)
    write_version(root, "tiny", 2, seed=1)  # served: the newest loadable version
    write_version(root, "tiny", 3, broken="onnx")  # refused
    write_version(root, "other", 1)
    return root


def infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray) -> None:
    inp = httpclient.InferInput("images", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x, binary_data=True)
    client.infer(model, [inp], headers=dict(AUTH))


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory):
    repo = make_repo(tmp_path_factory.mktemp("models"))
    s = Settings(
        model_repository=repo,
        port=free_port(),
        poll_interval_s=0,
        log_level="warning",
        api_key=KEY,
        allow_model_control=True,
    )
    with running_server(s) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)
        yield client, url
        client.close()


def test_statistics_count_what_ran(triton):
    client, url = triton
    before = client.get_inference_statistics("tiny", headers=dict(AUTH))["model_stats"][0]
    for n in (1, 3, 4):
        infer(client, "tiny", random_images(n))
    bad = httpx.post(url + "/v2/models/tiny/infer", json={"inputs": []}, headers=dict(AUTH))
    assert bad.status_code == 400
    after = client.get_inference_statistics("tiny", "2", headers=dict(AUTH))["model_stats"][0]
    assert after["name"] == "tiny" and after["version"] == "2"
    assert after["inference_count"] - before["inference_count"] == 8  # images
    assert 1 <= after["execution_count"] - before["execution_count"] <= 3  # model calls (batched)
    ok, fail = after["inference_stats"]["success"], after["inference_stats"]["fail"]
    assert ok["count"] - before["inference_stats"]["success"]["count"] == 3 and ok["ns"] > 0
    assert fail["count"] - before["inference_stats"]["fail"]["count"] == 1
    compute = after["inference_stats"]["compute_infer"]
    assert compute["count"] == after["execution_count"] and compute["ns"] > 0
    assert after["last_inference"] > 1.7e12  # ms since the epoch
    every = client.get_inference_statistics(headers=dict(AUTH))["model_stats"]
    assert sorted(m["name"] for m in every) == ["other", "tiny"]
    with pytest.raises(InferenceServerException):
        client.get_inference_statistics("tiny", "1", headers=dict(AUTH))  # not the served version


def test_repository_index_lists_every_version_with_its_state(triton):
    client, _ = triton
    index = {(e["name"], e["version"]): e for e in client.get_model_repository_index(headers=dict(AUTH))}
    assert {k: e["state"] for k, e in index.items()} == {
        ("other", "1"): "READY",
        ("tiny", "1"): "UNAVAILABLE",
        ("tiny", "2"): "READY",
        ("tiny", "3"): "UNAVAILABLE",
    }
    assert "failed to load" in index[("tiny", "3")]["reason"]
    ready = httpx.post(
        client._parsed_url.geturl() + "/v2/repository/index", json={"ready": True}, headers=AUTH
    )
    assert sorted((e["name"], e["version"]) for e in ready.json()) == [("other", "1"), ("tiny", "2")]


def test_unload_and_load(triton):
    client, _ = triton
    client.unload_model("other", headers=dict(AUTH))
    assert not client.is_model_ready("other", headers=dict(AUTH))
    assert all(
        e["state"] == "UNAVAILABLE"
        for e in client.get_model_repository_index(headers=dict(AUTH))
        if e["name"] == "other"
    )
    client.load_model("other", headers=dict(AUTH))
    assert client.is_model_ready("other", headers=dict(AUTH))
    infer(client, "other", random_images(2))
    with pytest.raises(InferenceServerException):
        client.load_model("missing", headers=dict(AUTH))


def test_the_same_over_grpc(tmp_path):
    """tritonclient.grpc's config, statistics, index and model control answer what the HTTP routes answer."""
    make_repo(tmp_path)
    s = Settings(
        model_repository=tmp_path,
        port=free_port(),
        grpc_port=free_port(),
        poll_interval_s=0,
        log_level="warning",
        api_key=KEY,
        allow_model_control=True,
    )
    with running_server(s) as url:
        http = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
        meta = {"authorization": f"Bearer {KEY}"}
        infer(http, "tiny", random_images(3))
        config = grpc.get_model_config("tiny", "2", headers=dict(meta), as_json=True)["config"]
        as_message = triton_message_class("ModelConfig")
        expected = json_format.ParseDict(http.get_model_config("tiny", "2", headers=dict(AUTH)), as_message())
        assert json_format.ParseDict(config, as_message()) == expected and config["name"] == "tiny"
        g_stats = grpc.get_inference_statistics("tiny", headers=dict(meta), as_json=True)["model_stats"][0]
        h_stats = http.get_inference_statistics("tiny", headers=dict(AUTH))["model_stats"][0]
        assert int(g_stats["inference_count"]) == h_stats["inference_count"] == 3
        assert int(g_stats["inference_stats"]["success"]["count"]) == 1
        g_index = grpc.get_model_repository_index(headers=dict(meta), as_json=True)["models"]
        h_index = http.get_model_repository_index(headers=dict(AUTH))
        assert [(e["name"], e["version"], e["state"]) for e in g_index] == [
            (e["name"], e["version"], e["state"]) for e in h_index
        ]
        grpc.unload_model("other", headers=dict(meta))
        assert not grpc.is_model_ready("other", headers=dict(meta))
        grpc.load_model("other", headers=dict(meta))
        assert grpc.is_model_ready("other", headers=dict(meta))
        http.close()
        grpc.close()


@pytest.mark.parametrize("allow, key", [(False, KEY), (True, None)])
def test_model_control_needs_the_setting_and_auth(tmp_path, allow, key):
    write_version(tmp_path, "tiny", 1)
    s = Settings(
        model_repository=tmp_path,
        port=free_port(),
        poll_interval_s=0,
        log_level="warning",
        api_key=key,
        allow_model_control=allow,
    )
    headers = dict(AUTH) if key else {}
    with running_server(s) as url:
        for action in ("load", "unload"):
            r = httpx.post(f"{url}/v2/repository/models/tiny/{action}", headers=headers)
            assert r.status_code == 400 and "RESCOM_ALLOW_MODEL_CONTROL" in r.json()["error"]
        assert httpx.get(url + "/v2/models/tiny/ready", headers=headers).status_code == 200
        index = httpx.post(url + "/v2/repository/index", headers=headers)
        assert index.status_code == 200 and index.json()[0]["state"] == "READY"  # the index stays readable
