"""Service building blocks without HTTP: settings, repository checks, runtime, image decoding, prior options."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from rescom.calibration import em_prior
from rescom.model_repository import METADATA_FILE
from rescom_dev.images import random_images
from rescom_dev.onnx_models import CLASS_COUNTS, tiny_reference_logits, write_version
from service.config import Settings
from service.errors import PayloadTooLarge, Unprocessable
from service.images import decode_image
from service.model_spec import ModelSpecError, fingerprint, list_versions, read_spec
from service.priors import AdaptivePrior, parse_prior, parse_temperature, parse_top_k
from service.runtime import ModelLoadError, RuntimeOptions, load_runtime

# ---------------------------------------------------------------------------------------------- settings


def test_settings_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RESCOM_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("RESCOM_BATCH_SIZES", "16, 1,4")
    monkeypatch.setenv("RESCOM_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("RESCOM_API_KEY", "hunter2-token")
    monkeypatch.setenv("RESCOM_PROVIDERS", "cpu")
    s = Settings()
    assert s.batch_sizes == [1, 4, 16] and s.buckets == (1, 4, 8)
    assert (
        s.api_key is not None and s.api_key.get_secret_value() == "hunter2-token" and "hunter2" not in repr(s)
    )
    assert s.host == "127.0.0.1" and s.port == 8000 and s.providers == "cpu"
    monkeypatch.setenv("RESCOM_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"model_repository": Path("/nonexistent/models")}, "not a directory"),
        ({"batch_sizes": "1,x"}, "comma-separated"),
        ({"batch_sizes": [0, 2]}, "positive"),
        ({"max_images_per_request": 500}, "must not exceed max_queue_size"),
        ({"default_prior": "sometimes"}, "default_prior"),
        ({"providers": "tpu"}, "providers"),
        ({"port": 0}, "port"),
        ({"model": "../etc"}, "not allowed"),
        ({"adaptive_alpha": 0.5}, "adaptive_alpha"),
    ],
)
def test_settings_errors_are_clear(tmp_path: Path, kwargs, fragment):
    with pytest.raises(ValidationError) as err:
        Settings(**({"model_repository": tmp_path} | kwargs))
    assert fragment in str(err.value)


# ---------------------------------------------------------------------------------------------- repository


def _edit(repo: Path, change) -> None:
    path = repo / "tiny" / "1" / METADATA_FILE
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: m.update(format="other/1"), "format"),
        (lambda m: m["class_names"].pop(), "class_counts must list 9"),
        (lambda m: m.update(class_counts=[-1] * 10), "class_counts"),
        (lambda m: m["outputs"][0].update(shape=[-1, 12]), "FP32 [-1, 10]"),
        (lambda m: m["outputs"][0].update(name="scores"), "no tensor named 'logits'"),
        (lambda m: m["inputs"][0].update(shape=[1, 32, 32, 3]), "dynamic batch axis"),
        (lambda m: m["calibration"].update(temperature=-2), "temperature"),
        (lambda m: m["calibration"].update(prior="weird"), "calibration.prior"),
        (lambda m: m["onnx"].update(file="../../etc/passwd"), "plain file name"),
        (lambda m: m["onnx"].update(sha256="0" * 64), "does not match onnx.sha256"),
        (lambda m: m.update(name="someone_else"), "folder is 'tiny'"),
        (lambda m: m["preprocess"].update(crop=40), "crop"),
    ],
)
def test_metadata_problems_are_refused_with_the_field(tmp_path: Path, change, fragment):
    write_version(tmp_path, "tiny", 1)
    _edit(tmp_path, change)
    with pytest.raises(ModelSpecError) as err:
        read_spec(tmp_path, "tiny", 1)
    assert fragment in str(err.value) and str(err.value).startswith("tiny/1/rescom.json")


def test_versions_and_fingerprints(tmp_path: Path):
    write_version(tmp_path, "tiny", 2)
    write_version(tmp_path, "tiny", 10)
    for name in ("0", "01", "latest"):
        (tmp_path / "tiny" / name).mkdir()
    assert list_versions(tmp_path, "tiny") == [2, 10]
    (tmp_path / "tiny" / "11").mkdir()
    (tmp_path / "tiny" / "11" / "model.onnx").write_bytes(b"half copied")
    assert fingerprint(tmp_path, "tiny", 11) is None  # no rescom.json yet: incomplete, not broken
    assert fingerprint(tmp_path, "tiny", 2) is not None
    spec = read_spec(tmp_path, "tiny", 2)
    assert spec.num_classes == 10 and spec.image_shape == (32, 32, 3) and spec.temperature == 1.5
    np.testing.assert_allclose(spec.train_prior, np.asarray(CLASS_COUNTS) / sum(CLASS_COUNTS))


# ---------------------------------------------------------------------------------------------- runtime


@pytest.mark.parametrize("pad", ["always", "never"])
def test_runtime_runs_any_batch_size_and_pads_on_request(tmp_path: Path, pad: str):
    write_version(tmp_path, "tiny", 1)
    rt = load_runtime(
        read_spec(tmp_path, "tiny", 1),
        RuntimeOptions(providers="cpu", max_batch_size=8, batch_sizes=(1, 4), pad_batches=pad),
    )
    assert rt.provider == "CPUExecutionProvider" and rt.buckets == (1, 4, 8) and rt.pad == (pad == "always")
    assert [rt.bucket_for(n) for n in (1, 2, 4, 5, 8)] == [1, 4, 4, 8, 8]
    for n in (1, 3, 8):
        x = random_images(n, seed=n)
        np.testing.assert_allclose(rt.run(x), tiny_reference_logits(x), atol=1e-3)
    with pytest.raises(ValueError, match="1..8"):
        rt.run(random_images(9))
    with pytest.raises(ValueError, match="uint8"):
        rt.run(np.zeros((1, 32, 32, 3), np.float32))


def test_runtime_refuses_graphs_that_contradict_their_metadata(tmp_path: Path):
    write_version(tmp_path, "tiny", 1, broken="shape")
    with pytest.raises(ModelLoadError, match="axis 1 is 32 in the graph, 64 in rescom.json"):
        load_runtime(read_spec(tmp_path, "tiny", 1), RuntimeOptions(providers="cpu"))


def test_runtime_refuses_a_required_gpu_that_is_missing(tmp_path: Path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    write_version(tmp_path, "tiny", 1)
    with pytest.raises(ModelLoadError, match="no CUDA provider"):
        load_runtime(read_spec(tmp_path, "tiny", 1), RuntimeOptions(providers="cuda"))
    rt = load_runtime(read_spec(tmp_path, "tiny", 1), RuntimeOptions(providers="auto"))
    assert rt.provider == "CPUExecutionProvider"


# ---------------------------------------------------------------------------------------------- images


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP", "GIF", "JPEG"])
def test_every_accepted_format_decodes_to_the_model_input(fmt: str):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (250, 10, 10)
    arr[:, 30:] = (10, 10, 250)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(_encode(Image.fromarray(arr), fmt, **kw), resize=32, crop=32, max_pixels=10**6)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[16, 2, 0] > 200 and out[16, -3, 2] > 200  # left red, right blue: not mirrored or rotated


def test_exif_orientation_alpha_palette_and_first_gif_frame():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    jpeg = _encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95)
    out = decode_image(jpeg, resize=20, crop=20, max_pixels=10**6)
    assert out[1, 10].mean() > 200 and out[-2, 10].mean() < 50  # upright: white on top
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert decode_image(_encode(rgba, "PNG"), resize=10, crop=10, max_pixels=100).min() == 255  # on white
    frames = [Image.new("P", (8, 8), 1), Image.new("P", (8, 8), 2)]
    for f, colour in zip(frames, ((255, 0, 0), (0, 255, 0)), strict=True):
        f.putpalette([0, 0, 0, *colour, *colour] + [0] * 759)
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    first = decode_image(gif.getvalue(), resize=8, crop=8, max_pixels=100)
    assert tuple(first[4, 4]) == (255, 0, 0)
    gray16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert decode_image(_encode(gray16, "PNG"), resize=8, crop=8, max_pixels=100).min() == 255


def test_decoding_limits_and_errors():
    png = _encode(Image.fromarray(random_images(1, size=50)[0]), "PNG")
    with pytest.raises(PayloadTooLarge, match="50x50 = 2500 pixels; the limit is 2000"):
        decode_image(png, resize=32, crop=32, max_pixels=2000)
    with pytest.raises(Unprocessable, match="truncated"):
        decode_image(png[:-200], resize=32, crop=32, max_pixels=10**6)
    with pytest.raises(Unprocessable, match="empty"):
        decode_image(b"", resize=32, crop=32, max_pixels=10**6)
    tiff = _encode(Image.new("RGB", (4, 4)), "TIFF")
    with pytest.raises(Unprocessable, match="accepted format"):
        decode_image(tiff, resize=32, crop=32, max_pixels=10**6)


# ---------------------------------------------------------------------------------------------- priors


def test_option_parsing(tmp_path: Path):
    write_version(tmp_path, "tiny", 1)
    spec = read_spec(tmp_path, "tiny", 1)
    assert parse_prior(None, spec).kind == "uniform" and parse_prior(None, spec, "train").kind == "train"
    assert parse_prior(" Adaptive ", spec).kind == "adaptive"
    chosen = parse_prior("adaptive:RLLS", spec)
    assert (chosen.kind, chosen.estimator) == ("adaptive", "rlls")
    assert (
        parse_prior("adaptive:em guard", spec).estimator == "em+guard"
    )  # an unencoded "+" in a query string
    with pytest.raises(Unprocessable, match="not one of"):
        parse_prior("adaptive:median", spec)
    np.testing.assert_allclose(parse_prior({"1": 1, "2": 1}, spec).weights, [0, 0.5, 0.5] + [0] * 7)
    np.testing.assert_allclose(parse_prior([1] * 10, spec).weights, [0.1] * 10)
    for bad in ("{", "bogus", 3, {"1": "x"}):
        with pytest.raises(Unprocessable):
            parse_prior(bad, spec)
    assert parse_temperature(None, spec) == 1.5 and parse_temperature("false", spec) == 1.0
    assert parse_temperature(True, spec) == 1.5 and parse_temperature("0.5", spec) == 0.5
    for bad in ("hot", 0, float("inf"), [1]):
        with pytest.raises(Unprocessable):
            parse_temperature(bad, spec)
    assert parse_top_k(None, spec, 5) == 5 and parse_top_k(None, spec, 50) == 10
    for bad in (0, 11, True, "3"):
        with pytest.raises(Unprocessable):
            parse_top_k(bad, spec, 5)


def test_adaptive_prior_window_and_lazy_em():
    rng = np.random.default_rng(0)
    ap = AdaptivePrior(3, temperature=1.0, window=16, alpha=1.0, update_every=4)
    np.testing.assert_allclose(ap.current(), [1 / 3] * 3)
    batches = [rng.normal(size=(k, 3)).astype(np.float32) for k in (5, 7, 9, 20)]
    for b in batches[:3]:
        ap.observe(b)
    window = np.concatenate(batches[:3])[-16:]
    assert ap.snapshot()["window_filled"] == 16 and ap.n_seen == 21
    np.testing.assert_allclose(np.sort(ap._window_copy(), axis=0), np.sort(window, axis=0))
    pi = asyncio.run(ap.estimate())
    np.testing.assert_allclose(
        pi, em_prior(window, dirichlet_alpha=1.0, max_iter=1000, tol=1e-10)[0], atol=1e-5
    )
    ap.observe(batches[3][:2])  # fewer than update_every new images: the estimate is reused
    assert asyncio.run(ap.estimate()) is pi
    assert asyncio.run(ap.estimate(force=True)) is not pi
    ap.observe(batches[3])  # more than the window at once
    np.testing.assert_allclose(np.sort(ap._window_copy(), axis=0), np.sort(batches[3][-16:], axis=0))
    ap.reset()
    assert ap.n_seen == 0 and ap.snapshot()["window_filled"] == 0


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_open_images_estimates_decoded_bytes_from_the_header_by_mode():
    from service.images import decoded_pixels, open_images

    blobs = [
        _encoded(Image.fromarray(np.zeros((300, 400), np.uint16)), "PNG"),  # I;16: 2 bytes per pixel
        _encoded(Image.new("1", (400, 300)), "PNG"),  # 1-bit: 1 byte, +1 for the shrink through L
        _encoded(Image.new("RGB", (40, 30)), "PNG"),  # RGB: 4 bytes (Pillow's storage)
    ]
    opened = open_images(blobs, resize=32, max_pixels=10**6, max_decoded_bytes=10**7)
    assert [o.decoded_bytes for o in opened] == [240_000, 240_000, 4_800]
    assert decoded_pixels(opened) == 2 * 120_000 + 1_200
    for o in opened:
        o.image.close()
    with pytest.raises(PayloadTooLarge, match="RESCOM_MAX_DECODED_BYTES"):
        open_images(blobs, resize=32, max_pixels=10**6, max_decoded_bytes=400_000)


def test_large_jpegs_decode_at_draft_scale():
    from service.images import decode_opened, open_images

    data = _encoded(Image.new("RGB", (2048, 1536), (200, 30, 60)), "JPEG")
    (opened,) = open_images([data], resize=32, max_pixels=10**7, max_decoded_bytes=10**8)
    assert opened.image.size == (256, 192)  # 1/8 scale, still >= 2x the resize
    out = decode_opened([opened], resize=32, crop=32)
    assert out.shape == (1, 32, 32, 3) and abs(int(out[..., 0].mean()) - 200) <= 3


def test_model_spec_reads_the_confusion_matrix_for_bbse_and_rlls(tmp_path):
    """calibration.confusion / val_counts of rescom.json reach the spec (the adaptive prior's BBSE and RLLS use
    them); malformed ones refuse the version with the field named."""
    from service.model_spec import ModelSpecError, read_spec

    write_version(tmp_path, "m", 1)
    path = tmp_path / "m" / "1" / METADATA_FILE
    meta = json.loads(path.read_text())
    c = len(meta["class_names"])
    meta["calibration"]["confusion"] = np.eye(c).tolist()
    meta["calibration"]["val_counts"] = [3] * c
    path.write_text(json.dumps(meta))
    spec = read_spec(tmp_path, "m", 1)
    np.testing.assert_array_equal(spec.confusion, np.eye(c))
    assert spec.val_counts == (3,) * c
    meta["calibration"]["confusion"] = [[1.0]]
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelSpecError, match="confusion"):
        read_spec(tmp_path, "m", 1)
