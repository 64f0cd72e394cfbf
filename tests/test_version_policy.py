"""The service honours config.pbtxt as Triton does: version_policy (latest N, specific), max_batch_size, edits
taking effect by hot reload; checked over HTTP with the stock tritonclient.http client."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from rescom import model_repository as mr
from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import tiny_reference_logits, write_version
from rescom_dev.servers import free_port, running_server
from service.config import Settings

pytestmark = pytest.mark.timeout(120)
X = random_images(3, seed=21)
PNG = encode(X[0])
SEEDS = {1: 0, 2: 1, 3: 2}  # version -> weights seed, so each version answers differently


def set_config(repo: Path, policy: mr.VersionPolicy, max_batch_size: int = 16) -> None:
    """Rewrite the two fields a user would edit, keeping the rest of config.pbtxt."""
    path = mr.config_path(repo, "tiny")
    text = mr.update_config_text(
        path.read_text(),
        {"version_policy": policy.to_pbtxt(), "max_batch_size": f"max_batch_size: {max_batch_size}"},
    )
    mr.write_text_atomic(path, text)


def wait_versions(
    client: httpclient.InferenceServerClient, expected: list[str], timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get_model_metadata("tiny")["versions"] == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"served versions never became {expected}")


def infer(client: httpclient.InferenceServerClient, version: str) -> np.ndarray:
    inp = httpclient.InferInput("images", list(X.shape), "UINT8")
    inp.set_data_from_numpy(X)
    result = client.infer("tiny", [inp], model_version=version)
    assert result.get_response()["model_version"] == version
    return result.as_numpy("logits")


def assert_served(client: httpclient.InferenceServerClient, served: list[int], absent: list[int]) -> None:
    for v in served:
        np.testing.assert_allclose(infer(client, str(v)), tiny_reference_logits(X, seed=SEEDS[v]), atol=1e-3)
        assert client.get_model_metadata("tiny", str(v))["versions"] == [str(x) for x in served]
        assert client.is_model_ready("tiny", str(v))
    for v in absent:
        assert not client.is_model_ready("tiny", str(v))
        with pytest.raises(InferenceServerException, match="not served"):
            infer(client, str(v))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for version, seed in SEEDS.items():
        write_version(tmp_path, "tiny", version, seed=seed)
    set_config(tmp_path, mr.VersionPolicy("latest", num_versions=2))
    return tmp_path


def test_latest_two_then_specific_one_and_three_by_editing_config(repo: Path):
    settings = Settings(model_repository=repo, port=free_port(), poll_interval_s=0.1, log_level="warning")
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)
        try:
            wait_versions(client, ["2", "3"])
            assert_served(client, served=[2, 3], absent=[1])
            config = client.get_model_config("tiny")
            assert config["version_policy"] == {"latest": {"num_versions": 2}}
            assert config["max_batch_size"] == 16  # config.pbtxt's, not the service default
            # unversioned requests go to the highest served version; ?version= reaches the others
            assert (
                c.post("/predict", content=PNG, headers={"Content-Type": "image/png"}).json()["version"] == 3
            )
            r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"}, params={"version": 2})
            assert r.status_code == 200 and r.json()["version"] == 2
            described = c.get("/v1/models/tiny").json()
            assert described["versions"] == [2, 3] and described["version_policy"] == "latest 2"

            set_config(repo, mr.VersionPolicy("specific", versions=(1, 3)), max_batch_size=8)
            wait_versions(client, ["1", "3"])
            assert_served(client, served=[1, 3], absent=[2])
            config = client.get_model_config("tiny", "1")
            assert config["version_policy"] == {"specific": {"versions": [1, 3]}}
            assert config["max_batch_size"] == 8  # the edit reloaded the kept version 3 too
            assert client.get_model_config("tiny", "3")["max_batch_size"] == 8
            r = c.post(
                "/predict", content=PNG, headers={"Content-Type": "image/png"}, params={"version": "01"}
            )
            assert r.status_code == 400 and "leading zeros" in r.text
        finally:
            client.close()


def test_an_unreadable_config_keeps_the_policy_in_force(repo: Path, caplog: pytest.LogCaptureFixture):
    settings = Settings(model_repository=repo, port=free_port(), poll_interval_s=0.1, log_level="warning")
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/v1/models/tiny").json()["versions"] == [2, 3]
        path = mr.config_path(repo, "tiny")
        good = path.read_text()
        path.write_text("")  # what a poll sees while an editor rewrites the file in place
        time.sleep(0.5)  # several polls
        assert c.get("/v1/models/tiny").json()["versions"] == [2, 3]
        path.write_text(good + "version_policy: { newest: {} }\n")
        time.sleep(0.5)
        assert c.get("/v1/models/tiny").json()["versions"] == [2, 3]
    assert any("version_policy.newest is not a policy" in r.getMessage() for r in caplog.records)
