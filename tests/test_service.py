"""The service end to end: a real ONNX model, a real uvicorn server on 127.0.0.1, real HTTP.

Scores are checked against :mod:`rescom.calibration` applied to the model's own logits (fetched through the v2
``logits`` output), so the checks hold for any model; with the tiny test model the logits are also checked
against a numpy re-implementation of the graph.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from rescom.calibration import calibrated_probs, em_prior, prior_from_counts
from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import TEMPERATURE, tiny_reference_logits, write_version
from rescom_dev.prometheus import metric_value, wait_metric
from rescom_dev.servers import local_settings, running_server
from service.config import Settings
from service.main import begin_drain, create_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_version(root, "tiny", 1)
    return root


@pytest.fixture(scope="module")
def settings(repo: Path) -> Settings:
    return local_settings(
        repo,
        max_queue_delay_ms=20,
        max_body_bytes=1 << 20,
        max_image_pixels=1_000_000,
        adaptive_estimator="em",  # the adaptive tests check the plain EM arithmetic
    )


@pytest.fixture(scope="module")
def app(settings: Settings):
    return create_app(settings)


@pytest.fixture(scope="module")
def url(settings: Settings, app):
    with running_server(settings, app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


IMAGES = random_images(12, seed=3)  # uint8 [12, 32, 32, 3]; 32x32 PNGs are served exactly as they are


def logits_of(client: httpx.Client, images: np.ndarray) -> np.ndarray:
    """The model's raw logits through KServe v2 JSON (no calibration involved)."""
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
    r = client.post("/v2/models/tiny/infer", content=json.dumps(body))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])


def scores_by_class(prediction: dict, num_classes: int = 10) -> np.ndarray:
    p = np.zeros(num_classes)
    for entry in prediction["top_k"]:
        p[entry["class_id"]] = entry["score"]
    return p


def post_png(client: httpx.Client, image: np.ndarray, **params) -> httpx.Response:
    return client.post(
        "/predict", params=params, content=encode(image), headers={"Content-Type": "image/png"}
    )


# ---------------------------------------------------------------------------------------------- basics


def test_health_and_readiness(client: httpx.Client):
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["models"]["tiny"]["version"] == 1
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_logits_are_the_graphs(client: httpx.Client):
    np.testing.assert_allclose(logits_of(client, IMAGES[:5]), tiny_reference_logits(IMAGES[:5]), atol=1e-3)


def test_raw_body_prediction(client: httpx.Client):
    r = post_png(client, IMAGES[0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["provider"]) == ("tiny", 1, "CPUExecutionProvider")
    assert body["calibration"] == {"prior": "uniform", "temperature": TEMPERATURE}
    (pred,) = body["predictions"]
    assert len(pred["top_k"]) == 5 and pred["top_k"][0]["class_id"] == pred["class_id"]
    assert pred["label"] == str(pred["class_id"])
    scores = [e["score"] for e in pred["top_k"]]
    assert scores == sorted(scores, reverse=True)
    expected = calibrated_probs(logits_of(client, IMAGES[:1]), TEMPERATURE)[0]
    np.testing.assert_allclose(
        scores_by_class(pred)[np.argsort(-expected)[:5]], np.sort(expected)[::-1][:5], atol=1e-5
    )


def test_multipart_two_files_come_back_in_order(client: httpx.Client):
    files = [
        ("file", ("a.png", encode(IMAGES[1]), "image/png")),
        ("file", ("b.png", encode(IMAGES[2]), "image/png")),
    ]
    r = client.post("/predict", params={"top_k": 10}, files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2
    expected = calibrated_probs(logits_of(client, IMAGES[1:3]), TEMPERATURE)
    for pred, exp in zip(preds, expected, strict=True):
        np.testing.assert_allclose(scores_by_class(pred), exp, atol=1e-5)


def test_json_base64_with_options_in_the_body(client: httpx.Client):
    jpeg = io.BytesIO()
    Image.fromarray(IMAGES[3]).save(jpeg, "BMP")
    payload = {
        "images": [
            base64.b64encode(encode(IMAGES[4])).decode(),
            "data:image/bmp;base64," + base64.b64encode(jpeg.getvalue()).decode(),
        ],
        "top_k": 10,
        "prior": "train",
        "temperature": False,
    }
    r = client.post("/predict", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["calibration"] == {"prior": "train", "temperature": 1.0}
    train = prior_from_counts(
        json.loads(client.get("/v2/models/tiny/config").json()["parameters"]["class_counts"]["string_value"])
    )
    expected = calibrated_probs(logits_of(client, IMAGES[[4, 3]]), 1.0, train)
    for pred, exp in zip(body["predictions"], expected, strict=True):
        np.testing.assert_allclose(scores_by_class(pred), exp, atol=1e-5)


@pytest.mark.parametrize(
    ("params", "temperature", "prior"),
    [
        ({}, TEMPERATURE, None),
        ({"prior": "uniform", "temperature": "true"}, TEMPERATURE, None),
        ({"prior": "train"}, TEMPERATURE, "train"),
        ({"prior": '{"0": 1, "3": 5}'}, TEMPERATURE, np.array([1, 0, 0, 5, 0, 0, 0, 0, 0, 0]) / 6),
        ({"prior": "[1,1,1,1,1,2,2,2,2,2]", "temperature": "2.5"}, 2.5, np.array([1] * 5 + [2] * 5) / 15),
        ({"temperature": "false"}, 1.0, None),
    ],
)
def test_priors_and_temperatures_follow_the_formula(client: httpx.Client, params, temperature, prior):
    counts = json.loads(
        client.get("/v2/models/tiny/config").json()["parameters"]["class_counts"]["string_value"]
    )
    pi = prior_from_counts(counts) if isinstance(prior, str) else prior
    r = post_png(client, IMAGES[5], top_k=10, **params)
    assert r.status_code == 200, r.text
    expected = calibrated_probs(logits_of(client, IMAGES[5:6]), temperature, pi)[0]
    np.testing.assert_allclose(scores_by_class(r.json()["predictions"][0]), expected, atol=1e-6)


def test_adaptive_prior_estimates_em_on_the_traffic(client: httpx.Client, settings: Settings):
    traffic = random_images(40, seed=11)
    logits = logits_of(client, traffic)  # (this v2 call feeds the window too: reset afterwards)
    assert client.post("/v1/models/tiny/prior/reset").json()["n_seen"] == 0
    files = [("file", (f"{i}.png", encode(im), "image/png")) for i, im in enumerate(traffic)]
    assert client.post("/predict", files=files).status_code == 200
    state = client.get("/v1/models/tiny/prior").json()
    assert (
        state["n_seen"] == 40
        and state["window_filled"] == 40
        and state["window_size"] == settings.adaptive_window
    )
    np.testing.assert_allclose(state["train"], prior_from_counts(state_counts(client)), atol=1e-12)
    reference, _ = em_prior(
        logits, temperature=TEMPERATURE, dirichlet_alpha=settings.adaptive_alpha, max_iter=1000, tol=1e-10
    )
    np.testing.assert_allclose(state["adaptive"], reference, atol=1e-4)
    r = post_png(client, IMAGES[6], top_k=10, prior="adaptive")
    assert r.json()["calibration"]["prior"] == "adaptive"
    expected = calibrated_probs(logits_of(client, IMAGES[6:7]), TEMPERATURE, np.asarray(state["adaptive"]))[0]
    np.testing.assert_allclose(scores_by_class(r.json()["predictions"][0]), expected, atol=1e-5)
    assert client.delete("/v1/models/tiny/prior/reset").status_code == 200
    assert client.get("/v1/models/tiny/prior").json()["n_seen"] == 0


def test_a_request_picks_its_label_shift_estimator(client: httpx.Client):
    """prior=adaptive:NAME runs that estimator (here the service's default is plain EM, so adaptive:em answers
    exactly like adaptive); an unknown estimator is a 422 that lists the allowed ones."""
    traffic = [
        ("file", (f"{i}.png", encode(im), "image/png")) for i, im in enumerate(random_images(24, seed=5))
    ]
    assert client.post("/predict", files=traffic).status_code == 200
    default = post_png(client, IMAGES[3], top_k=10, prior="adaptive").json()["predictions"][0]
    named = post_png(client, IMAGES[3], top_k=10, prior="adaptive:em").json()["predictions"][0]
    np.testing.assert_allclose(scores_by_class(named), scores_by_class(default), atol=1e-9)
    assert post_png(client, IMAGES[3], prior="adaptive:map_em+guard").status_code == 200
    bad = post_png(client, IMAGES[3], prior="adaptive:median")
    assert bad.status_code == 422 and "rlls" in bad.json()["error"]


def state_counts(client: httpx.Client) -> list[float]:
    return client.get("/v1/models/tiny").json()["class_counts"]


def test_requests_are_batched_under_concurrency(url: str, client: httpx.Client):
    def totals() -> tuple[float, float]:
        text = client.get("/metrics").text
        return metric_value(text, "rescom_batch_size_sum", model="tiny"), metric_value(
            text, "rescom_batch_size_count", model="tiny"
        )

    s0, c0 = totals()
    bodies = [encode(im) for im in random_images(48, seed=5)]

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
            rs = await asyncio.gather(
                *(ac.post("/predict", content=b, headers={"Content-Type": "image/png"}) for b in bodies)
            )
        return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 48
    s1, c1 = totals()
    assert s1 - s0 == 48
    assert (s1 - s0) / (c1 - c0) > 1.5, f"mean batch {(s1 - s0) / (c1 - c0)}: no batching happened"
    text = client.get("/metrics").text
    assert (
        metric_value(text, "rescom_batch_size_bucket", model="tiny", le="1.0") < c1
    )  # some batch had > 1 image
    assert metric_value(text, "rescom_queue_duration_seconds_count", model="tiny") >= 48
    assert metric_value(text, "rescom_queue_depth", model="tiny") == 0
    assert (
        metric_value(text, "rescom_model_info", model="tiny", version="1", provider="CPUExecutionProvider")
        == 1
    )
    assert metric_value(text, "rescom_requests_total", route="/predict", method="POST", status="200") >= 48
    assert metric_value(text, "rescom_request_duration_seconds_count", route="/predict") >= 48


MIXED_OPTIONS = [
    ({}, TEMPERATURE, None),
    ({"prior": "train"}, TEMPERATURE, "train"),
    ({"temperature": "false"}, 1.0, None),
    ({"prior": "train", "temperature": "2.5"}, 2.5, "train"),
    ({"prior": "[1,1,1,1,1,2,2,2,2,2]"}, TEMPERATURE, np.array([1] * 5 + [2] * 5) / 15),
]


def test_each_request_of_a_batch_keeps_its_own_calibration(url: str, client: httpx.Client):
    """Calibration runs once per model call and calibration (service/inference.py:rank_rows): requests batched
    together with different priors and temperatures must still each get softmax(z / T + b + log π) with theirs."""
    counts = json.loads(
        client.get("/v2/models/tiny/config").json()["parameters"]["class_counts"]["string_value"]
    )
    images = random_images(40, seed=17)
    logits = logits_of(client, images)  # [40, C]
    cases = [(i, *MIXED_OPTIONS[i % len(MIXED_OPTIONS)]) for i in range(len(images))]
    batches_before = metric_value(client.get("/metrics").text, "rescom_batch_size_count", model="tiny")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
            return await asyncio.gather(
                *(
                    ac.post(
                        "/predict",
                        params={"top_k": 10, **params},
                        content=encode(images[i]),
                        headers={"Content-Type": "image/png"},
                    )
                    for i, params, _, _ in cases
                )
            )

    responses = asyncio.run(burst())
    batches = (
        metric_value(client.get("/metrics").text, "rescom_batch_size_count", model="tiny") - batches_before
    )
    assert batches < len(images), "no two requests shared a model call: the test checks nothing"
    for (i, _, temperature, prior), r in zip(cases, responses, strict=True):
        assert r.status_code == 200, r.text
        pi = prior_from_counts(counts) if isinstance(prior, str) else prior
        expected = calibrated_probs(logits[i : i + 1], temperature, pi)[0]
        # 1e-5: float32 logits of a batch of 40 vs of the call the request ran in; a mixed-up π or T is ~1e-1
        np.testing.assert_allclose(scores_by_class(r.json()["predictions"][0]), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- bad input

PNG = encode(IMAGES[0])
BIG = encode(np.zeros((1200, 1000, 3), np.uint8))  # 1.2 MP > max_image_pixels (1 MP), small file


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"content": b""}, 400, "empty request body"),
        (
            {"content": bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8))},
            422,
            "not an image",
        ),
        ({"content": PNG[: len(PNG) // 2]}, 422, "truncated"),
        ({"content": BIG}, 413, "pixels"),
        ({"content": b"x" * ((1 << 20) + 10)}, 413, "limit"),
        ({"content": PNG, "headers": {"Content-Type": "text/plain"}}, 415, "image/*"),
        ({"json": {"images": ["not base64!"]}}, 400, "base64"),
        ({"json": {"images": []}}, 400, "images"),
        ({"json": {"pictures": [1]}}, 400, "invalid JSON request"),
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        ({"files": [("upload", ("a.png", PNG, "image/png"))]}, 400, "'file'"),
        ({"content": PNG, "params": {"top_k": 0}}, 422, "top_k"),
        ({"content": PNG, "params": {"top_k": 11}}, 422, "1..10"),
        ({"content": PNG, "params": {"top_k": "many"}}, 422, "top_k"),
        ({"content": PNG, "params": {"model": "nope"}}, 404, "unknown model 'nope'"),
        ({"content": PNG, "params": {"version": "9"}}, 404, "version 9"),
        ({"content": PNG, "params": {"prior": '{"0": -1}'}}, 422, ">= 0"),
        ({"content": PNG, "params": {"prior": '{"0": NaN, "1": 1}'}}, 422, "finite"),
        ({"content": PNG, "params": {"prior": '{"zebra": 1}'}}, 422, "unknown class 'zebra'"),
        ({"content": PNG, "params": {"prior": "[1, 2]"}}, 422, "10 classes"),
        ({"content": PNG, "params": {"prior": '{"0": 0}'}}, 422, "all zero"),
        ({"content": PNG, "params": {"prior": "{oops"}}, 422, "not valid JSON"),
        ({"content": PNG, "params": {"prior": "sideways"}}, 422, "not understood"),
        ({"content": PNG, "params": {"temperature": "-1"}}, 422, "temperature"),
        ({"content": PNG, "params": {"colour": "red"}}, 400, "unknown query parameter"),
    ],
)
def test_bad_requests_get_precise_4xx(client: httpx.Client, kwargs, status, fragment):
    kwargs = dict(kwargs)
    if "content" in kwargs:
        kwargs.setdefault("headers", {"Content-Type": "image/png"})
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and fragment in body["error"], body
    assert "Traceback" not in r.text and "/tmp" not in r.text


def test_too_many_images_in_one_request(client: httpx.Client, settings: Settings):
    files = [("file", (f"{i}.png", PNG, "image/png")) for i in range(settings.max_images_per_request + 1)]
    r = client.post("/predict", files=files)
    assert r.status_code in (400, 413) and "error" in r.json()


def test_unknown_route_and_method(client: httpx.Client):
    r = client.get("/nowhere")
    assert r.status_code == 404 and "no route" in r.json()["error"]
    assert client.get("/predict").status_code == 405


def test_internal_errors_do_not_leak(client: httpx.Client, monkeypatch: pytest.MonkeyPatch):
    import service.inference as inference_module

    def boom(*args, **kwargs):
        raise RuntimeError("secret detail at /srv/models/tiny/1/model.onnx")

    monkeypatch.setattr(inference_module, "predict_response", boom)
    r = post_png(client, IMAGES[0])
    assert r.status_code == 500
    assert r.json() == {"error": "internal error"}


# ---------------------------------------------------------------------------------------------- introspection


def test_model_listing(client: httpx.Client):
    (model,) = client.get("/v1/models").json()["models"]
    assert model["name"] == "tiny" and model["ready"] and model["version"] == 1
    assert model["provider"] == "CPUExecutionProvider"
    assert model["class_names"] == [str(i) for i in range(10)] and model["num_classes"] == 10
    assert model["input"]["shape"] == [-1, 32, 32, 3] and model["temperature"] == TEMPERATURE
    assert model["metrics"]["acc"] == 50.0 and model["batch_sizes"][-1] == model["max_batch_size"]
    assert client.get("/v1/models/tiny").json()["name"] == "tiny"
    assert client.get("/v1/models/other").status_code == 404
    assert client.get("/v1/models/other/prior").status_code == 404


def test_openapi_documents_the_endpoints(client: httpx.Client):
    spec = client.get("/openapi.json").json()
    for path in ("/predict", "/v2/models/{name}/infer", "/v1/models", "/health/ready", "/metrics"):
        assert path in spec["paths"], path
    params = {p["name"] for p in spec["paths"]["/predict"]["post"]["parameters"]}
    assert {"top_k", "prior", "temperature", "model", "version"} <= params
    assert set(spec["paths"]["/predict"]["post"]["requestBody"]["content"]) >= {
        "image/*",
        "multipart/form-data",
        "application/json",
    }
    assert client.get("/docs").status_code == 200


def test_draining_turns_readiness_off(app, client: httpx.Client):
    begin_drain(app)  # what SIGTERM does first (service.__main__)
    try:
        r = client.get("/health/ready")
        assert r.status_code == 503 and "shutting down" in r.json()["error"]
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/models/tiny/ready").status_code == 400
        assert client.get("/health/live").status_code == 200
    finally:
        app.state.rescom.draining = False
    assert client.get("/health/ready").status_code == 200


@pytest.fixture(scope="module")
def slow_path_url(repo: Path):
    """The same service without the raw-body fast path: every request goes through FastAPI."""
    s = local_settings(repo, max_body_bytes=1 << 20, max_image_pixels=1_000_000)
    with running_server(s, create_app(s, fast_path=False)) as base:
        yield base


@pytest.mark.parametrize(
    ("content", "params", "headers"),
    [
        (PNG, {"top_k": 10, "prior": "train"}, {"Content-Type": "image/png"}),
        (PNG, {}, {}),
        (b"", {}, {"Content-Type": "image/png"}),
        (PNG[:100], {}, {"Content-Type": "application/octet-stream"}),
        (BIG, {}, {"Content-Type": "image/png"}),
        (b"x" * ((1 << 20) + 10), {}, {"Content-Type": "image/png"}),
        (PNG, {"top_k": "x"}, {"Content-Type": "image/png"}),
        (PNG, {"prior": '{"0": -1}'}, {"Content-Type": "image/png"}),
        (PNG, {"model": "nope"}, {"Content-Type": "image/png"}),
        (PNG, {"colour": "red"}, {"Content-Type": "image/png"}),
    ],
)
def test_fast_path_answers_exactly_like_the_fastapi_route(client, slow_path_url, content, params, headers):
    fast = client.post("/predict", content=content, params=params, headers=headers)
    with httpx.Client(base_url=slow_path_url, timeout=30) as other:
        slow = other.post("/predict", content=content, params=params, headers=headers)
    assert fast.status_code == slow.status_code
    if fast.status_code == 413 and len(content) > 1 << 20:
        return  # the limit is checked from Content-Length by different layers; both answer 413
    assert fast.json() == slow.json()


# ---------------------------------------------------------------------------------------------- auth, overload


def test_bearer_token_auth(repo: Path):
    s = local_settings(repo, api_key="s3cret")
    with running_server(s) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/health/ready").status_code == 200 and c.get("/v2/health/live").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png", **headers})
            assert r.status_code == 401, headers
            assert r.headers["WWW-Authenticate"].startswith("Bearer") and "error" in r.json()
        assert c.get("/metrics").status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v2/models/tiny").status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/predict", content=PNG, headers={"Content-Type": "image/png", **ok}).status_code == 200
        assert c.get("/metrics", headers=ok).status_code == 200


def test_overload_gets_503_and_queue_deadline_504(tmp_path: Path):
    write_version(tmp_path, "slow", 1, kind="slow", slow_matmuls=400, slow_dim=512)  # >= 0.35 s a batch, idle
    s = local_settings(
        tmp_path,
        max_batch_size=1,
        instances=1,
        max_queue_size=1,
        max_images_per_request=1,
        max_queue_delay_ms=0,
        request_timeout_s=0.15,
    )
    with running_server(s) as base:

        async def scenario():
            async with httpx.AsyncClient(base_url=base, timeout=30) as ac:

                async def post():
                    return await ac.post("/predict", content=PNG, headers={"Content-Type": "image/png"})

                busy = asyncio.ensure_future(post())
                await wait_metric(
                    ac, "rescom_queue_duration_seconds_count", 1, model="slow"
                )  # model now busy
                queued = asyncio.ensure_future(post())
                await wait_metric(ac, "rescom_queue_depth", 1, model="slow")  # the queue is full
                t0 = time.perf_counter()
                rejected = await post()
                rejected_after = time.perf_counter() - t0
                return await busy, await queued, rejected, rejected_after

        busy, queued, rejected, rejected_after = asyncio.run(scenario())
        assert busy.status_code == 200
        assert rejected.status_code == 503 and rejected.headers["Retry-After"] == "1", rejected.text
        assert "overloaded" in rejected.json()["error"] and rejected_after < 1.0
        assert queued.status_code == 504 and "waited" in queued.json()["error"], queued.text
        text = httpx.get(base + "/metrics").text
        assert metric_value(text, "rescom_rejected_total", model="slow", reason="queue_full") >= 1
        assert metric_value(text, "rescom_rejected_total", model="slow", reason="timeout") >= 1
