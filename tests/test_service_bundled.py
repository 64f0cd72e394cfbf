"""The bundled trained model (models/digits_lt) through the service; skipped until the repository has it.

``RESCOM_TEST_MODEL_REPOSITORY`` points the test at another repository holding a ``digits_lt`` model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from rescom.calibration import calibrated_probs
from rescom.model_repository import METADATA_FILE
from rescom_dev.images import encode, random_images
from rescom_dev.servers import local_settings, running_server

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]
REPO = Path(os.environ.get("RESCOM_TEST_MODEL_REPOSITORY", ROOT / "models"))

if not (REPO / "digits_lt").is_dir():
    pytest.skip(f"no digits_lt model in {REPO}", allow_module_level=True)


def test_bundled_model_serves_exactly_what_onnxruntime_computes():
    import onnxruntime as ort

    s = local_settings(REPO, model="digits_lt")
    with running_server(s) as url, httpx.Client(base_url=url, timeout=60) as c:
        info = c.get("/v1/models/digits_lt").json()
        version_dir = REPO / "digits_lt" / str(info["version"])
        meta = json.loads((version_dir / METADATA_FILE).read_text())
        crop = meta["preprocess"]["crop"]
        x = random_images(8, size=crop, seed=1)
        body = {
            "inputs": [
                {"name": "images", "shape": list(x.shape), "datatype": "UINT8", "data": x.ravel().tolist()}
            ],
            "outputs": [{"name": "logits"}],
        }
        out = c.post("/v2/models/digits_lt/infer", json=body).json()["outputs"][0]
        served = np.asarray(out["data"], np.float32).reshape(out["shape"])
        session = ort.InferenceSession(
            str(version_dir / meta["onnx"]["file"]), providers=["CPUExecutionProvider"]
        )
        np.testing.assert_allclose(served, session.run(None, {"images": x})[0], atol=1e-4)
        r = c.post(
            "/predict",
            content=encode(x[0]),
            headers={"Content-Type": "image/png"},
            params={"top_k": len(meta["class_names"])},
        )
        assert r.status_code == 200
        scores = {e["class_id"]: e["score"] for e in r.json()["predictions"][0]["top_k"]}
        t = meta["calibration"]["temperature"] or 1.0
        bias = meta["calibration"].get("class_bias")  # BCTS b (absent in older exports: 0)
        expected = calibrated_probs(served[:1], t, class_bias=bias)[0]
        np.testing.assert_allclose([scores[i] for i in range(len(expected))], expected, atol=1e-5)


def test_bundled_model_keeps_its_recorded_accuracy_through_http():
    pytest.importorskip(
        "torch"
    )  # the digits-LT split comes from rescom.data (torch); the service does not need it
    pytest.importorskip("sklearn")
    from rescom.data import build_datasets

    test = build_datasets("digits_lt", None).test
    test.transform = None
    images, labels = zip(*(test[i] for i in range(len(test))), strict=True)
    s = local_settings(REPO, model="digits_lt")
    with running_server(s) as url, httpx.Client(base_url=url, timeout=60) as c:
        info = c.get("/v1/models/digits_lt").json()
        served_ids: list[int] = []
        for start in range(0, len(images), 50):
            chunk = images[start : start + 50]
            files = [("file", (f"{i}.png", _png(im), "image/png")) for i, im in enumerate(chunk)]
            preds = c.post("/predict", files=files, params={"top_k": 1}).json()["predictions"]
            served_ids += [p["class_id"] for p in preds]
    # Offline: the same model file in ONNX Runtime, the same calibration (z/T + b, uniform prior), no HTTP.
    import onnxruntime as ort

    version_dir = REPO / "digits_lt" / str(info["version"])
    meta = json.loads((version_dir / METADATA_FILE).read_text())
    session = ort.InferenceSession(
        str(version_dir / meta["onnx"]["file"]), providers=["CPUExecutionProvider"]
    )
    x = np.stack([np.asarray(im.convert("RGB")) for im in images])  # [N, 32, 32, 3] uint8
    logits = session.run(None, {"images": x})[0]  # [N, C]
    t = meta["calibration"]["temperature"] or 1.0
    offline_ids = calibrated_probs(logits, t, class_bias=meta["calibration"].get("class_bias")).argmax(1)
    labels_arr = np.asarray(labels)
    http_acc = 100.0 * float(np.mean(np.asarray(served_ids) == labels_arr))
    offline_acc = 100.0 * float(np.mean(offline_ids == labels_arr))
    assert served_ids == offline_ids.tolist()  # every single answer, not only the rate
    assert http_acc == offline_acc
    # rescom.json records the served figure (z/T + b, uniform prior) next to the raw argmax one.
    if len(labels_arr) == meta["metrics"]["num_images"]:
        assert http_acc == pytest.approx(meta["metrics"]["served"]["top1"], abs=1e-9)
    assert abs(http_acc - meta["metrics"]["raw"]["top1"]) <= 1.0


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
