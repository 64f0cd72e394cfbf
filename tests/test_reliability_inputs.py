"""Bad and unusual inputs against a real server (uvicorn on 127.0.0.1) serving the bundled model.

Every bad input gets a precise 4xx with ``{"error": "..."}`` that names the problem and leaks no traceback or
path, and the server stays healthy: after each case ``/health/ready`` is 200 and a good image still gets exactly
the prediction it got before. Unusual but valid images (1x1, 16-bit, CMYK, palette, alpha, animated GIF, EXIF
rotation) are served, and served as what they depict: their scores equal those of an explicitly converted RGB
reference image.

``tests/test_service.py::test_bad_requests_get_precise_4xx`` already checks the basic request errors (empty body,
random bytes, truncated PNG, pixel limit, body limit, wrong Content-Type, bad base64, top_k range, unknown
model/version, malformed priors) against the tiny test model; this module adds the ones it lacks and re-sends a
few of those in the mixed-traffic storm.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from reliability_helpers import (
    assert_clean_error,
    leaks,
    model_repository,
    png_claiming,
    probs_of,
    wait_until,
)

from rescom.calibration import softmax
from rescom_dev.images import encode
from rescom_dev.prometheus import metric_value
from rescom_dev.servers import local_settings, running_server

pytestmark = pytest.mark.timeout(120)

BODY_LIMIT = 1 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    repo, name = model_repository(tmp_path_factory.mktemp("models"))
    settings = local_settings(
        repo, model=name, max_body_bytes=BODY_LIMIT
    )  # max_image_pixels stays at its default (25 MP)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        info = client.get(f"/v1/models/{name}").json()
        yield {"url": url, "client": client, "name": name, "info": info, "settings": settings}


@pytest.fixture(scope="module")
def client(served) -> httpx.Client:
    return served["client"]


def _image(seed: int, size: int = 32) -> np.ndarray:
    """A structured (not flat) uint8 RGB image: a bright stroke on noise, different for every seed."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    c = size // 4 + seed % (size // 2)
    img[size // 8 : -size // 8, c : c + max(2, size // 8)] = 230  # vertical bar
    img[size // 8 : size // 8 + max(2, size // 10), c : c + size // 3] = 230  # top arm: not symmetric
    return img


GOOD = _image(0)  # uint8 [32, 32, 3]
GOOD_PNG = encode(GOOD)


def predict_raw(c: httpx.Client, body: bytes, content_type: str = "image/png", **params) -> httpx.Response:
    return c.post("/predict", content=body, headers={"Content-Type": content_type}, params=params)


def scores(c: httpx.Client, body: bytes, num_classes: int, content_type: str = "image/png") -> np.ndarray:
    r = predict_raw(c, body, content_type, top_k=num_classes)
    assert r.status_code == 200, r.text
    return probs_of(r.json()["predictions"][0], num_classes)


@pytest.fixture(scope="module")
def baseline(served) -> np.ndarray:
    """The good image's scores before any bad input was sent."""
    return scores(served["client"], GOOD_PNG, served["info"]["num_classes"])


def assert_healthy(served, baseline: np.ndarray) -> None:
    c = served["client"]
    assert c.get("/health/ready").status_code == 200
    np.testing.assert_allclose(scores(c, GOOD_PNG, len(baseline)), baseline, atol=1e-6)


# ---------------------------------------------------------------------------------------------- bad inputs


def _jpeg(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


JPEG = _jpeg(_image(1, 64))
TEXT = b"name,score\nalice,3\nbob,5\nthis is a CSV file, not a picture\n"
B64 = base64.b64encode(GOOD_PNG).decode()
PIXELS = GOOD.ravel().tolist()


def v2(**fields) -> dict[str, Any]:
    """KServe v2 JSON request for one image; ``fields`` override the input tensor's fields."""
    return {
        "inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": PIXELS, **fields}]
    }


# (id, request kwargs for httpx, status, fragment of the error message). "{model}" in a URL is the served model.
BAD: list[tuple[str, dict[str, Any], int, str]] = [
    # image bodies
    ("empty-body", {"content": b""}, 400, "empty request body"),
    ("truncated-png", {"content": GOOD_PNG[: len(GOOD_PNG) // 2]}, 422, "truncated"),
    ("truncated-jpeg", {"content": JPEG[: len(JPEG) // 2]}, 422, "truncated"),
    ("jpeg-header-only", {"content": JPEG[:200]}, 422, "image"),
    ("random-bytes", {"content": np.random.default_rng(1).bytes(5000)}, 422, "not an image"),
    ("text-as-png-raw", {"content": TEXT}, 422, "not an image in an accepted format"),
    (
        "text-as-png-multipart",
        {"files": [("file", ("scores.png", TEXT, "image/png"))]},
        422,
        "not an image in an accepted format",
    ),
    ("bomb-30000x30000", {"content": png_claiming(30000, 30000)}, 413, "900000000 pixels"),
    ("over-pixel-limit-6000x6000", {"content": png_claiming(6000, 6000)}, 413, "the limit is 25000000"),
    ("zero-width-png", {"content": png_claiming(0, 32)}, 422, "image"),
    ("tiff", {"content": b"II*\x00" + bytes(200)}, 422, "accepted format"),
    # transport
    ("content-type-text", {"content": GOOD_PNG, "headers": {"Content-Type": "text/plain"}}, 415, "image/*"),
    (
        "content-type-xml",
        {"content": GOOD_PNG, "headers": {"Content-Type": "application/xml"}},
        415,
        "image/*",
    ),
    ("body-over-limit", {"content": b"\x89PNG" + bytes(BODY_LIMIT)}, 413, "RESCOM_MAX_BODY_BYTES"),
    # JSON form
    ("json-bad-base64", {"json": {"images": ["%%%not base64%%%"]}}, 400, "not valid base64"),
    ("json-base64-of-text", {"json": {"images": [base64.b64encode(TEXT).decode()]}}, 422, "not an image"),
    ("json-images-not-a-list", {"json": {"images": B64}}, 400, "images"),
    ("json-unknown-field", {"json": {"images": [B64], "colour": "red"}}, 400, "colour"),
    (
        "json-nested-too-deep",
        {"content": b"[" * 5000, "headers": {"Content-Type": "application/json"}},
        400,
        "deep",
    ),
    # options
    ("top_k-0", {"content": GOOD_PNG, "params": {"top_k": 0}}, 422, "top_k must be in 1..10"),
    ("top_k-11", {"content": GOOD_PNG, "params": {"top_k": 11}}, 422, "top_k must be in 1..10"),
    ("top_k-negative", {"content": GOOD_PNG, "params": {"top_k": -3}}, 422, "top_k must be in 1..10"),
    ("top_k-huge-json", {"json": {"images": [B64], "top_k": 10**30}}, 422, "top_k must be in 1..10"),
    ("top_k-float-json", {"json": {"images": [B64], "top_k": 2.5}}, 400, "top_k"),
    (
        "unknown-model",
        {"content": GOOD_PNG, "params": {"model": "resnet9000"}},
        404,
        "unknown model 'resnet9000'",
    ),
    ("unknown-version", {"content": GOOD_PNG, "params": {"version": "7"}}, 404, "version 7 is not served"),
    ("version-not-a-number", {"content": GOOD_PNG, "params": {"version": "latest"}}, 400, "positive integer"),
    ("prior-negative", {"content": GOOD_PNG, "params": {"prior": '{"1": -0.5}'}}, 422, ">= 0"),
    ("prior-nan", {"content": GOOD_PNG, "params": {"prior": '{"1": NaN}'}}, 422, "finite"),
    (
        "prior-infinite-json",  # 1e999 is valid JSON syntax and parses to inf
        {
            "content": b'{"images": ["%s"], "prior": [1e999, 1, 1, 1, 1, 1, 1, 1, 1, 1]}' % B64.encode(),
            "headers": {"Content-Type": "application/json"},
        },
        422,
        "finite",
    ),
    ("prior-huge-int-json", {"json": {"images": [B64], "prior": {"1": 10**400}}}, 422, "invalid prior"),
    (
        "prior-unknown-class",
        {"content": GOOD_PNG, "params": {"prior": '{"cat": 1}'}},
        422,
        "unknown class 'cat'",
    ),
    (
        "prior-class-out-of-range",
        {"content": GOOD_PNG, "params": {"prior": '{"10": 1}'}},
        422,
        "out of range",
    ),
    ("prior-empty-string", {"content": GOOD_PNG, "params": {"prior": ""}}, 422, "not understood"),
    ("prior-empty-object", {"content": GOOD_PNG, "params": {"prior": "{}"}}, 422, "all zero"),
    ("prior-empty-list", {"content": GOOD_PNG, "params": {"prior": "[]"}}, 422, "0 weights"),
    ("prior-empty-object-json", {"json": {"images": [B64], "prior": {}}}, 422, "all zero"),
    ("prior-not-a-number", {"json": {"images": [B64], "prior": {"1": "lots"}}}, 422, "must be a number"),
    (
        "prior-nested-too-deep",
        {"content": GOOD_PNG, "params": {"prior": "[" * 5000}},
        422,
        "nested too deeply",
    ),
    ("temperature-zero", {"content": GOOD_PNG, "params": {"temperature": "0"}}, 422, "temperature"),
    ("temperature-nan", {"json": {"images": [B64], "temperature": "nan"}}, 422, "temperature"),
    (
        "unknown-parameter",
        {"content": GOOD_PNG, "params": {"topk": "3"}},
        400,
        "unknown query parameter 'topk'",
    ),
]

V2_BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("v2-wrong-shape", {"json": v2(shape=[1, 16, 16, 3], data=[0] * 768)}, 400, "does not match"),
    ("v2-wrong-rank", {"json": v2(shape=[32, 32, 3])}, 400, "does not match"),
    ("v2-zero-batch", {"json": v2(shape=[0, 32, 32, 3], data=[])}, 400, "n >= 1"),
    ("v2-huge-batch", {"json": v2(shape=[10**9, 32, 32, 3])}, 413, "images in one request"),
    ("v2-datatype-fp32", {"json": v2(datatype="FP32")}, 400, "must be UINT8"),
    ("v2-datatype-bytes", {"json": v2(datatype="BYTES")}, 400, "must be UINT8"),
    ("v2-wrong-input-name", {"json": v2(name="pixels")}, 400, "unknown input 'pixels'"),
    ("v2-element-count", {"json": v2(data=PIXELS[:-1])}, 400, "3071 elements"),
    ("v2-value-range", {"json": v2(data=[300] * 3072)}, 400, "0..255"),
    ("v2-strings", {"json": v2(data=["a"] * 3072)}, 400, "0..255"),
    ("v2-no-data", {"json": v2(data=None)}, 400, "neither 'data'"),
    (
        "v2-parameters-not-object",
        {"json": v2(parameters=["binary_data_size"])},
        400,
        "must be an object",
    ),
    (
        "v2-output-parameters-not-object",
        {"json": {**v2(), "outputs": [{"name": "logits", "parameters": [3]}]}},
        400,
        "must be an object",
    ),
    ("v2-unknown-output", {"json": {**v2(), "outputs": [{"name": "features"}]}}, 400, "unknown output"),
    ("v2-header-not-json", {"content": b"{inputs: nope"}, 400, "not valid JSON"),
    ("v2-header-nested-too-deep", {"content": b"[" * 5000}, 400, "nested too deeply"),
    ("v2-empty-body", {"content": b""}, 400, "empty request body"),
]


def _binary(header: dict[str, Any], payload: bytes, header_length: int | None = None) -> dict[str, Any]:
    head = json.dumps(header).encode()
    n = len(head) if header_length is None else header_length
    return {"content": head + payload, "headers": {"Inference-Header-Content-Length": str(n)}}


_HEAD_3072 = v2(data=None, parameters={"binary_data_size": 3072})
_HEAD_3072["inputs"][0].pop("data")
V2_BAD += [
    ("v2-binary-short-body", _binary(_HEAD_3072, bytes(3000)), 400, "3000 bytes of binary data"),
    ("v2-binary-long-body", _binary(_HEAD_3072, bytes(4000)), 400, "4000 bytes of binary data"),
    (
        "v2-binary-size-vs-shape",
        _binary(
            {"inputs": [{**_HEAD_3072["inputs"][0], "parameters": {"binary_data_size": 3000}}]}, bytes(3000)
        ),
        400,
        "needs 3072 bytes",
    ),
    (
        "v2-binary-header-length-past-body",
        _binary(_HEAD_3072, bytes(10), header_length=10**6),
        400,
        "body has",
    ),
    (
        "v2-binary-header-length-not-int",
        {"content": b"{}", "headers": {"Inference-Header-Content-Length": "ten"}},
        400,
        "must be an integer",
    ),
    ("v2-binary-without-size", _binary(v2(), bytes(3072)), 400, "no input has binary_data_size"),
    (
        "v2-raw-binary-wrong-size",
        {"content": bytes(3000), "headers": {"Inference-Header-Content-Length": "0"}},
        400,
        "needs 3072 bytes",
    ),
]


def _send(c: httpx.Client, case: dict[str, Any], model: str, v2_route: bool) -> httpx.Response:
    kwargs = dict(case)
    if "content" in kwargs and not v2_route:
        kwargs["headers"] = {"Content-Type": "image/png", **kwargs.get("headers", {})}
    url = f"/v2/models/{model}/infer" if v2_route else "/predict"
    return c.post(url, **kwargs)


@pytest.mark.parametrize(("case", "status", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_predict_input_gets_a_precise_4xx_and_the_server_stays_healthy(
    served, baseline, case, status, fragment
):
    assert_clean_error(_send(served["client"], case, served["name"], False), status, fragment)
    assert_healthy(served, baseline)


@pytest.mark.parametrize(("case", "status", "fragment"), [c[1:] for c in V2_BAD], ids=[c[0] for c in V2_BAD])
def test_bad_v2_request_gets_a_precise_4xx_and_the_server_stays_healthy(
    served, baseline, case, status, fragment
):
    assert_clean_error(_send(served["client"], case, served["name"], True), status, fragment)
    assert_healthy(served, baseline)


def test_unknown_model_and_version_on_v2(served, baseline):
    c = served["client"]
    assert_clean_error(c.post("/v2/models/resnet9000/infer", json=v2()), 404, "unknown model")
    assert_clean_error(c.post(f"/v2/models/{served['name']}/versions/7/infer", json=v2()), 404, "version 7")
    assert_clean_error(c.get(f"/v2/models/{served['name']}/versions/x"), 400, "positive integer")
    assert_healthy(served, baseline)


def test_storm_of_bad_requests_mixed_with_good_ones(served, baseline):
    """All bad cases three times, concurrently, interleaved with good requests: every good request gets exactly
    its baseline answer, every bad one its own error; nothing is crossed over between requests."""
    name, n = served["name"], len(baseline)
    jobs: list[tuple[str, dict[str, Any], int, bool]] = []
    for rep in range(3):
        for case_id, case, status, _ in BAD + V2_BAD:
            jobs.append((case_id, case, status, case_id.startswith("v2-")))
            if rep == 0:
                jobs.append(("good", {"content": GOOD_PNG, "params": {"top_k": n}}, 200, False))

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served["url"], timeout=60) as ac:
            sem = asyncio.Semaphore(32)

            async def one(case: dict[str, Any], is_v2: bool) -> httpx.Response:
                kwargs = dict(case)
                if "content" in kwargs and not is_v2:
                    kwargs["headers"] = {"Content-Type": "image/png", **kwargs.get("headers", {})}
                async with sem:
                    return await ac.post(f"/v2/models/{name}/infer" if is_v2 else "/predict", **kwargs)

            return await asyncio.gather(*(one(case, is_v2) for _, case, _, is_v2 in jobs))

    responses = asyncio.run(fire())
    for (case_id, _, status, _), r in zip(jobs, responses, strict=True):
        assert r.status_code == status, (case_id, r.text[:200])
        assert not leaks(r.text), case_id
        if case_id == "good":
            np.testing.assert_allclose(probs_of(r.json()["predictions"][0], n), baseline, atol=1e-6)
    assert_healthy(served, baseline)
    text = served["client"].get("/metrics").text
    assert 'status="500"' not in text, "a request of the storm was answered 500"


# ---------------------------------------------------------------------------------------------- unusual images


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb_png(arr: np.ndarray) -> bytes:
    return encode(np.ascontiguousarray(arr.astype(np.uint8)))


def _cases() -> list[tuple[str, bytes, bytes]]:
    """(id, unusual file, a plain RGB PNG of the 32x32 picture the model must see), the reference built by hand."""
    rng = np.random.default_rng(5)
    out = []
    # 1x1: resized (bilinear) to a flat 32x32 square of the same colour.
    out.append(
        (
            "1x1",
            _save(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG"),
            _rgb_png(np.full((32, 32, 3), (200, 30, 90))),
        )
    )
    # 16-bit grayscale: rescaled from 0..65535 to 0..255, replicated to three channels.
    g16 = (rng.integers(0, 65536, (32, 32))).astype(np.uint16)
    g8 = np.rint(g16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    out.append(
        ("gray16-png", _save(Image.fromarray(g16), "PNG"), _rgb_png(np.repeat(g8[..., None], 3, axis=2)))
    )
    # 8-bit grayscale.
    g = _image(2)[..., 0]
    out.append(
        ("gray8-png", _save(Image.fromarray(g, "L"), "PNG"), _rgb_png(np.repeat(g[..., None], 3, axis=2)))
    )
    # palette: indices into an explicit colour table.
    palette = rng.integers(0, 256, (16, 3)).astype(np.uint8)
    idx = rng.integers(0, 16, (32, 32)).astype(np.uint8)
    p_img = Image.fromarray(idx, "P")
    p_img.putpalette(palette.ravel().tolist())
    out.append(("palette-png", _save(p_img, "PNG"), _rgb_png(palette[idx])))
    # RGBA: transparent pixels become white, opaque ones keep their colour.
    rgb = _image(3)
    alpha = np.where(rng.random((32, 32)) < 0.3, 0, 255).astype(np.uint8)
    rgba = np.dstack([rgb, alpha])
    expected = np.where(alpha[..., None] == 0, 255, rgb)
    out.append(("rgba-png", _save(Image.fromarray(rgba, "RGBA"), "PNG"), _rgb_png(expected)))
    # LA: grayscale with alpha, same rule.
    la = np.dstack([g, alpha])
    expected = np.repeat(np.where(alpha == 0, 255, g)[..., None], 3, axis=2)
    out.append(("la-png", _save(Image.fromarray(la, "LA"), "PNG"), _rgb_png(expected)))
    # CMYK JPEG: decoded by the server exactly as Pillow decodes it and converts it to RGB (checked to be close to
    # the original colours below, so an inverted-CMYK bug would not pass).
    cmyk = _save(Image.fromarray(_image(4)).convert("CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(cmyk)) as im:
        out.append(("cmyk-jpeg", cmyk, _rgb_png(np.asarray(im.convert("RGB")))))
    return out


UNUSUAL = _cases()


@pytest.mark.parametrize(("data", "reference"), [c[1:] for c in UNUSUAL], ids=[c[0] for c in UNUSUAL])
def test_unusual_image_modes_are_served_as_what_they_depict(served, baseline, data, reference):
    n = len(baseline)
    np.testing.assert_allclose(
        scores(served["client"], data, n), scores(served["client"], reference, n), atol=1e-5
    )
    assert_healthy(served, baseline)


def test_cmyk_jpeg_keeps_its_colours():
    cmyk = next(data for case_id, data, _ in UNUSUAL if case_id == "cmyk-jpeg")
    with Image.open(io.BytesIO(cmyk)) as im:
        assert im.mode == "CMYK"
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert np.abs(rgb - _image(4)).mean() < 8  # JPEG error only, not inverted or shifted colours


def test_animated_gif_is_classified_by_its_first_frame(served, baseline):
    n = len(baseline)
    frames = [Image.fromarray(_image(s)).quantize(colors=64, dither=Image.Dither.NONE) for s in (6, 7)]
    gif = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(gif)) as im:
        assert getattr(im, "n_frames", 1) == 2
        first = np.asarray(im.convert("RGB"))
        im.seek(1)
        second = np.asarray(im.convert("RGB"))
    got = scores(served["client"], gif, n, "image/gif")
    np.testing.assert_allclose(got, scores(served["client"], _rgb_png(first), n), atol=1e-5)
    assert np.abs(got - scores(served["client"], _rgb_png(second), n)).max() > 1e-3  # the frames differ
    assert_healthy(served, baseline)


def test_exif_orientation_is_applied_before_classification(served, baseline):
    """A JPEG stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to display") is classified as
    the upright picture: same scores as the manually rotated pixels, different from the stored ones."""
    n = len(baseline)
    upright = _image(8, 48)[:, 8:40]  # 48 x 32 (h x w), not square: a wrong rotation also changes the crop
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what a sideways camera writes: 32 x 48
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    with Image.open(io.BytesIO(jpeg)) as im:
        decoded = np.asarray(im.convert("RGB"))  # the stored (sideways) pixels, JPEG-decoded, no EXIF applied
    by_hand = np.ascontiguousarray(np.rot90(decoded, k=-1))  # rotate 90 degrees clockwise
    assert by_hand.shape == (48, 32, 3)
    got = scores(served["client"], jpeg, n, "image/jpeg")
    np.testing.assert_allclose(got, scores(served["client"], _rgb_png(by_hand), n), atol=1e-5)
    assert np.abs(got - scores(served["client"], _rgb_png(decoded), n)).max() > 1e-3  # orientation matters
    assert_healthy(served, baseline)


def test_unusual_images_through_v2_logits_match_the_reference_pixels(served):
    """The /predict scores of a palette PNG equal softmax(z) of the v2 logits of its reference pixels (asked with
    ``temperature=false``: raw logits, no fitted temperature or bias, uniform prior)."""
    c, name = served["client"], served["name"]
    data, reference = next((d, r) for case_id, d, r in UNUSUAL if case_id == "palette-png")
    with Image.open(io.BytesIO(reference)) as im:
        pixels = np.asarray(im.convert("RGB"))[None]  # [1, 32, 32, 3]
    body = v2(data=pixels.ravel().tolist())
    body["outputs"] = [{"name": "logits"}]
    r = c.post(f"/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    logits = np.asarray(r.json()["outputs"][0]["data"], np.float64).reshape(1, -1)
    n = logits.shape[1]
    got = predict_raw(c, data, top_k=n, temperature="false", prior="uniform")
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(probs_of(got.json()["predictions"][0], n), softmax(logits)[0], atol=1e-5)


def test_many_images_in_one_multipart_request_with_one_bad_names_its_position(served, baseline):
    files = [("file", (f"{i}.png", GOOD_PNG, "image/png")) for i in range(3)]
    files.insert(2, ("file", ("bad.png", TEXT, "image/png")))
    assert_clean_error(served["client"].post("/predict", files=files), 422, "image 2")
    assert_healthy(served, baseline)


def test_module_uses_the_bundled_model_when_present(served):
    if (Path(__file__).resolve().parents[1] / "models" / "digits_lt").is_dir():
        assert served["name"] == "digits_lt" and served["info"]["accuracy"]["top1"] > 50


@pytest.mark.parametrize("content_type", ["image/png", "application/json", "multipart/form-data; boundary=x"])
def test_client_that_disconnects_mid_body_is_not_an_error(served, baseline, caplog, content_type):
    """A client that announces 100 kB, sends 10 bytes and hangs up: nothing is logged as an error, no 500."""
    import socket
    from urllib.parse import urlsplit

    caplog.set_level(logging.WARNING, logger="rescom")
    c = served["client"]

    def answered_400() -> float:
        try:
            return metric_value(
                c.get("/metrics").text, "rescom_requests_total", route="/predict", status="400"
            )
        except KeyError:
            return 0.0

    before = answered_400()
    parts = urlsplit(served["url"])
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 100000\r\n\r\n"
        )
        sock.sendall(head.encode() + b"0123456789")
    wait_until(lambda: answered_400() > before, 10, "the server to notice the disconnect")  # counted as 400
    assert_healthy(served, baseline)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]
    assert 'status="500"' not in served["client"].get("/metrics").text
