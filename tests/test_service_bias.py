"""A model whose metadata carries a BCTS class bias ``b`` is served ``softmax(z / T + b + log π)`` for every prior.

A real ONNX test model (``rescom_dev/onnx_models.py``) behind a real uvicorn server; the expected posteriors are
numpy on the model's own logits (the v2 ``logits`` output), so nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from rescom.model_repository import METADATA_FILE
from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import CLASS_COUNTS, NUM_CLASSES, TEMPERATURE, write_version
from rescom_dev.servers import local_settings, running_server
from service.config import Settings
from service.model_spec import ModelSpecError, read_spec

pytestmark = pytest.mark.timeout(120)

# Large enough to change the argmax of some images; mean zero like the exporter's.
BIAS = np.array([1.5, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 1.0, -1.5, 0.0])
IMAGES = random_images(8, seed=21)  # uint8 [8, 32, 32, 3]


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _em(a: np.ndarray, alpha: float, iterations: int = 5000) -> np.ndarray:
    """Saerens EM with a Dirichlet(α) MAP step on calibrated logits ``a`` (written out, independent of the code)."""
    c = a.shape[1]
    pi = np.full(c, 1.0 / c)
    for _ in range(iterations):
        q = _softmax(a + np.log(pi))
        pi = (q.sum(axis=0) + alpha - 1.0) / (a.shape[0] + c * (alpha - 1.0))
    return pi


def _with_bias(repo: Path, name: str, bias: object) -> None:
    write_version(repo, name, 1)
    path = repo / name / "1" / METADATA_FILE
    meta = json.loads(path.read_text())
    meta["calibration"]["class_bias"] = bias
    path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    repo = tmp_path_factory.mktemp("models")
    _with_bias(repo, "biased", BIAS.tolist())
    return local_settings(repo, adaptive_estimator="em")


@pytest.fixture(scope="module")
def client(settings: Settings):
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _logits(client: httpx.Client, images: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": list(images.shape),
                "datatype": "UINT8",
                "data": images.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "logits"}],
    }
    r = client.post("/v2/models/biased/infer", content=json.dumps(body))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])  # [n, C]


def _scores(prediction: dict) -> np.ndarray:
    p = np.zeros(NUM_CLASSES)
    for entry in prediction["top_k"]:
        p[entry["class_id"]] = entry["score"]
    return p


def _predict(client: httpx.Client, images: np.ndarray, **params: str) -> np.ndarray:
    files = [("file", (f"{i}.png", encode(im), "image/png")) for i, im in enumerate(images)]
    r = client.post("/predict", params={"top_k": NUM_CLASSES, **params}, files=files)
    assert r.status_code == 200, r.text
    return np.stack([_scores(p) for p in r.json()["predictions"]])  # [n, C]


TRAIN = np.asarray(CLASS_COUNTS[:NUM_CLASSES], dtype=np.float64) / sum(CLASS_COUNTS[:NUM_CLASSES])
CUSTOM = np.array([1, 1, 1, 1, 1, 4, 4, 4, 4, 4]) / 25.0


@pytest.mark.parametrize(
    ("params", "log_prior"),
    [
        ({}, np.zeros(NUM_CLASSES)),
        ({"prior": "train"}, np.log(TRAIN)),
        ({"prior": json.dumps(CUSTOM.tolist())}, np.log(CUSTOM)),
    ],
    ids=["uniform", "train", "custom"],
)
def test_fixed_priors_add_the_bias_after_the_temperature(client: httpx.Client, params, log_prior):
    z = _logits(client, IMAGES)
    expected = _softmax(z / TEMPERATURE + BIAS + log_prior)
    np.testing.assert_allclose(_predict(client, IMAGES, **params), expected, atol=1e-6)
    # the bias matters for this model: without it the posteriors differ
    assert np.abs(expected - _softmax(z / TEMPERATURE + log_prior)).max() > 0.05


def test_adaptive_prior_runs_em_on_the_bias_corrected_logits(client: httpx.Client, settings: Settings):
    traffic = random_images(48, seed=5)
    z_traffic = _logits(client, traffic)  # (feeds the window too: reset next)
    assert client.post("/v1/models/biased/prior/reset").status_code == 200
    _predict(client, traffic)
    state = client.get("/v1/models/biased/prior").json()
    assert state["n_seen"] == len(traffic)
    pi = _em(z_traffic / TEMPERATURE + BIAS, settings.adaptive_alpha)
    np.testing.assert_allclose(state["adaptive"], pi, atol=1e-4)
    biased_em = _em(z_traffic / TEMPERATURE, settings.adaptive_alpha)
    assert np.abs(biased_em - pi).max() > 0.01, "the bias must change the EM estimate on this traffic"
    z = _logits(client, IMAGES[:3])
    got = _predict(client, IMAGES[:3], prior="adaptive")
    np.testing.assert_allclose(got, _softmax(z / TEMPERATURE + BIAS + np.log(state["adaptive"])), atol=1e-5)


def test_v2_probabilities_and_temperature_options(client: httpx.Client):
    z = _logits(client, IMAGES[:4])
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [4, 32, 32, 3],
                "datatype": "UINT8",
                "data": IMAGES[:4].ravel().tolist(),
            }
        ],
        "outputs": [{"name": "probabilities"}],
        "parameters": {"prior": "train"},
    }
    r = client.post("/v2/models/biased/infer", content=json.dumps(body))
    assert r.status_code == 200, r.text
    probs = np.asarray(r.json()["outputs"][0]["data"]).reshape(4, NUM_CLASSES)
    np.testing.assert_allclose(probs, _softmax(z / TEMPERATURE + BIAS + np.log(TRAIN)), atol=1e-6)
    # a numeric T keeps the bias; "false" means raw logits: neither T nor b
    np.testing.assert_allclose(
        _predict(client, IMAGES[:4], temperature="2.5"), _softmax(z / 2.5 + BIAS), atol=1e-6
    )
    np.testing.assert_allclose(_predict(client, IMAGES[:4], temperature="false"), _softmax(z), atol=1e-6)
    info = client.get("/v1/models/biased").json()
    np.testing.assert_allclose(info["class_bias"], BIAS, atol=1e-12)


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        ([0.0] * 3, "3 entries"),
        ([0.0] * 9 + [float("nan")], "finite"),
        ("0", "list"),
        ([True] * 10, "number"),
    ],
)
def test_a_malformed_class_bias_is_refused(tmp_path: Path, bias, message):
    _with_bias(tmp_path, "bad", bias)
    with pytest.raises(ModelSpecError, match=message):
        read_spec(tmp_path, "bad", 1)


def test_old_metadata_without_a_bias_reads_as_none(tmp_path: Path):
    write_version(tmp_path, "old", 1)
    assert read_spec(tmp_path, "old", 1).class_bias is None
    _with_bias(tmp_path, "zeros", [0.0] * NUM_CLASSES)
    assert read_spec(tmp_path, "zeros", 1).class_bias is None
