"""The demo page (``GET /``) end to end: a real server with the bundled digits-LT model, driven by a real
headless Chromium through Playwright.

Needs the ``playwright`` Python package and a system Chromium (Debian: ``apt-get install chromium``; no
browser is ever downloaded; ``RESCOM_CHROMIUM`` points at another binary); the browser tests skip cleanly
without them. The digit images come from the digits-LT test split (:func:`rescom.data.build_datasets`, needs
torch and scikit-learn), encoded as PNG like ``scripts/digits_pngs.py`` writes them. Screenshots go to
``$RESCOM_TEST_ARTIFACTS/demo_page`` when that is set, else to a temporary folder.

Displayed probabilities are percentages with two decimals (``"< 0.01 %"`` below 0.005 %), so they are
compared with the formulas to half a unit of the last digit, ``0.005`` percentage points, plus ``1e-6`` for
float noise.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from rescom import model_repository as mr
from rescom.calibration import log_prior, normalize_prior, prior_from_counts, softmax
from rescom.preprocess import resize_center_crop
from rescom_dev.browser import CHROMIUM_ARGS, chromium_path
from rescom_dev.images import encode
from rescom_dev.servers import local_settings, running_server
from service.config import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
REPO = Path(os.environ.get("RESCOM_TEST_MODEL_REPOSITORY", ROOT / "models"))
MODEL = "digits_lt"
TOKEN = "demo-test-token-0123456789"
PCT_TOL = 0.005 + 1e-6  # half a unit of the displayed 0.01 %, plus float noise

if not (REPO / MODEL).is_dir():
    pytest.skip(f"no {MODEL} model in {REPO}", allow_module_level=True)


# ---------------------------------------------------------------------------------------------- fixtures


def demo_settings(**overrides: Any) -> Settings:
    return local_settings(REPO, model=MODEL, **overrides)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(demo_settings()) as url:
        yield url


@pytest.fixture(scope="module")
def auth_server() -> Iterator[str]:
    with running_server(demo_settings(api_key=TOKEN)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="the playwright package is not installed (pip install playwright)",
        exc_type=ImportError,
    )
    executable = chromium_path()
    if executable is None:
        message = "no system Chromium (apt-get install chromium, or set RESCOM_CHROMIUM)"
        if os.environ.get("RESCOM_REQUIRE_BROWSER"):  # CI installs it: a missing browser is a failure there
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own context and sessionStorage); fails the test on script errors or CSP violations."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"uncaught: {err}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(msg.text)
            if msg.type == "error" and ("Content Security Policy" in msg.text or "Refused to" in msg.text)
            else None
        ),
    )
    yield page
    context.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("RESCOM_TEST_ARTIFACTS")
    path = Path(folder) / "demo_page" if folder else tmp_path_factory.mktemp("demo_page")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    version = mr.latest_version(REPO, MODEL)
    data = mr.read_metadata(REPO, MODEL, version)
    data["_dir"] = mr.version_path(REPO, MODEL, version)
    return data


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits-LT test split: uint8 ``[N, 32, 32, 3]`` images and ``[N]`` labels."""
    pytest.importorskip("torch", reason="rescom.data (the digits-LT split) needs torch")
    pytest.importorskip("sklearn", reason="digits-LT is built from scikit-learn's bundled digits")
    from rescom.data import build_datasets

    test = build_datasets("digits_lt", None).test
    test.transform = None
    images, labels = zip(*(test[i] for i in range(len(test))), strict=True)
    return np.stack([np.asarray(img.convert("RGB")) for img in images]), np.asarray(labels)


@pytest.fixture(scope="module")
def logits_of(meta: dict[str, Any]) -> Callable[[bytes], np.ndarray]:
    """Logits ``[C]`` of an encoded image straight from onnxruntime, preprocessed as the service does."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(meta["_dir"] / meta["onnx"]["file"]), providers=["CPUExecutionProvider"]
    )
    crop, resize = meta["preprocess"]["crop"], meta["preprocess"]["resize"]

    def run(png: bytes) -> np.ndarray:
        x = resize_center_crop(Image.open(io.BytesIO(png)), resize, crop)[None]  # [1, crop, crop, 3]
        return session.run(None, {"images": x})[0][0].astype(np.float64)  # [C]

    return run


@pytest.fixture(scope="module")
def prior_sensitive_png(
    digits: tuple[np.ndarray, np.ndarray], meta: dict[str, Any], logits_of: Callable[[bytes], np.ndarray]
) -> bytes:
    """The test image whose probabilities move most between the uniform and the training prior
    (deterministic), so that switching priors visibly changes what the page shows."""
    images, _ = digits
    t = meta["calibration"]["temperature"] or 1.0
    log_pi = log_prior(prior_from_counts(meta["class_counts"]))
    best, best_tv = b"", -1.0
    for img in images:
        png = encode(img)
        z = logits_of(png) / t
        tv = 0.5 * float(np.abs(softmax(z) - softmax(z + log_pi)).sum())
        if tv > best_tv:
            best, best_tv = png, tv
    assert best_tv > 0.05, f"no test image is sensitive to the prior (best total variation {best_tv:.3f})"
    return best


# ---------------------------------------------------------------------------------------------- helpers


def api_predict(url: str, png: bytes, *, token: str | None = None, **options: Any) -> httpx.Response:
    """``POST /predict`` with the raw image body, the way a non-browser client calls it."""
    headers = {"Content-Type": "image/png"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in options.items()}
    return httpx.post(url + "/predict", content=png, headers=headers, params=params, timeout=30)


def open_page(page: Any, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('model').options.length > 0")


def wait_model_ready(page: Any) -> None:
    page.wait_for_function(
        "() => { const s = document.getElementById('model'); return !s.disabled && s.value !== ''; }"
    )


def act_and_wait(page: Any, action: Callable[[], None]) -> None:
    """Run ``action`` (which starts a prediction) and wait until the page has shown the latest one."""
    before = int(page.get_attribute("#results", "data-seq") or 0)
    action()
    page.wait_for_function(
        """before => { const r = document.getElementById('results');
            const seq = Number(r.dataset.seq);
            return seq > before && seq === Number(r.dataset.started); }""",
        arg=before,
    )


def upload(page: Any, data: bytes, name: str = "digit.png", mime: str = "image/png") -> None:
    act_and_wait(
        page, lambda: page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
    )


def shown_bars(page: Any) -> list[tuple[int, str, str]]:
    """``(class id, label, probability text)`` of every bar, in display order."""
    return page.eval_on_selector_all(
        "#bars > li",
        """rows => rows.map(r => [Number(r.dataset.classId), r.querySelector('.bar-label').textContent,
            r.querySelector('.bar-prob').textContent])""",
    )


def assert_shows(bars: list[tuple[int, str, str]], expected: np.ndarray) -> None:
    """Each displayed probability equals ``expected`` to the display rounding; bars are by probability."""
    for class_id, _, text in bars:
        pct = 100.0 * expected[class_id]
        if text == "< 0.01 %":
            assert pct < PCT_TOL, (class_id, text, pct)
        else:
            value = float(re.fullmatch(r"(\d+\.\d\d) %", text).group(1))
            assert abs(value - pct) <= PCT_TOL, (class_id, text, pct)
    assert bars[0][0] == int(np.argmax(expected))
    shown = [expected[c] for c, _, _ in bars]
    assert all(a >= b - 1e-12 for a, b in zip(shown, shown[1:], strict=False)), shown


def calibrated(z: np.ndarray, t: float, pi: np.ndarray | None, bias: np.ndarray | float = 0.0) -> np.ndarray:
    """``softmax(z / T + b + log π)`` (``π`` None = uniform), written out from the library's primitives."""
    return softmax(z / t + bias + (0.0 if pi is None else log_prior(pi)))


def select_prior(page: Any, kind: str) -> None:
    act_and_wait(page, lambda: page.check(f"#prior-{kind}"))


def chart_marks(page: Any, kind: str) -> list[dict[str, float]]:
    return page.eval_on_selector_all(
        f"#prior-chart .mark-{kind}",
        """ms => ms.map(m => ({cls: Number(m.dataset.class), value: Number(m.dataset.value),
            y: m.tagName === 'circle' ? Number(m.getAttribute('cy'))
                : Number(m.getAttribute('y')) + Number(m.getAttribute('height')) / 2}))""",
    )


def wait_chart_n_seen(page: Any, n_seen: int) -> None:
    page.wait_for_function(
        "n => document.getElementById('prior-stats').dataset.nSeen === String(n)", arg=n_seen, timeout=15_000
    )


# ---------------------------------------------------------------------------------------------- tests


def test_page_and_static_files_are_served_with_a_strict_policy(server: str):
    with httpx.Client(base_url=server, timeout=10) as c:
        r = c.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert c.head("/").status_code == 200
        html = r.text
        for ref in re.findall(r'(?:src|href)="([^"]*)"', html):  # nothing from another origin
            assert ref.startswith(("/", "#", "data:")), ref
        for name, media in (("app.js", "text/javascript"), ("style.css", "text/css")):
            s = c.get(f"/static/{name}")
            assert s.status_code == 200, name
            assert s.headers["content-type"] == f"{media}; charset=utf-8"
            assert "content-security-policy" in s.headers
            assert "https://" not in s.text and "@import" not in s.text and "url(" not in s.text
        for bad in ("/static/missing.js", "/static/..%2Fmain.py", "/static/.env", "/static/index.txt"):
            miss = c.get(bad)
            assert miss.status_code == 404, bad
            assert "error" in miss.json()
        paths = c.get("/openapi.json").json()["paths"]
        assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_page_is_public_when_auth_is_on(auth_server: str):
    with httpx.Client(base_url=auth_server, timeout=10) as c:
        assert c.get("/").status_code == 200
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/v1/models").status_code == 401


def test_prediction_and_priors_match_the_formulas(
    page: Any,
    server: str,
    meta: dict[str, Any],
    prior_sensitive_png: bytes,
    logits_of: Callable[[bytes], np.ndarray],
    artifacts: Path,
):
    png = prior_sensitive_png
    z = logits_of(png)
    t = float(meta["calibration"]["temperature"] or 1.0)
    # The fitted per-class bias b goes with the fitted T (BCTS; absent = 0) and is dropped with T = 1.
    b = np.asarray(httpx.get(f"{server}/v1/models/{MODEL}").json().get("class_bias") or 0.0, np.float64)
    pi_train = prior_from_counts(meta["class_counts"])
    open_page(page, server)
    wait_model_ready(page)
    assert page.input_value("#model") == MODEL
    upload(page, png)

    # Default view: uniform prior, fitted T, top-5; same answer as the API for the same bytes.
    reference = api_predict(server, png, prior="uniform", temperature=True, top_k=5)
    assert reference.status_code == 200
    expected_label = reference.json()["predictions"][0]["label"]
    bars = shown_bars(page)
    assert len(bars) == 5 == int(page.input_value("#top-k"))
    assert bars[0][1] == expected_label
    assert f"Predicted {expected_label} " in page.text_content("#summary")
    assert [c for c, _, _ in bars] == [e["class_id"] for e in reference.json()["predictions"][0]["top_k"]]
    assert_shows(bars, calibrated(z, t, None, b))
    assert re.search(r"^\d+ ms · (CPU|CUDA|Tensorrt|TensorRT)\b", page.text_content("#timing"))
    counts = page.eval_on_selector_all("#bars .bar-count", "cs => cs.map(c => c.textContent)")
    assert counts == [f"{meta['class_counts'][c]} training images" for c, _, _ in bars]
    page.screenshot(path=str(artifacts / "prediction_uniform.png"), full_page=True)

    # Every class from here on, so that all ten probabilities are compared.
    act_and_wait(page, lambda: (page.fill("#top-k", "10"), page.dispatch_event("#top-k", "change")))
    assert len(shown_bars(page)) == 10
    assert_shows(shown_bars(page), calibrated(z, t, None, b))

    select_prior(page, "train")
    assert_shows(shown_bars(page), calibrated(z, t, pi_train, b))
    assert "prior train" in page.text_content("#summary")
    page.screenshot(path=str(artifacts / "prediction_train.png"), full_page=True)

    # Custom: the training counts reversed (a backward long-tailed test set).
    custom = {str(c): int(n) for c, n in enumerate(reversed(meta["class_counts"]))}
    select_prior(page, "custom")
    assert page.is_visible("#custom-prior")
    page.fill("#custom-prior", json.dumps(custom))
    act_and_wait(page, lambda: page.click("#custom-apply"))
    pi_custom = normalize_prior(custom, len(meta["class_names"]), meta["class_names"])
    assert_shows(shown_bars(page), calibrated(z, t, pi_custom, b))
    assert "prior custom" in page.text_content("#summary")

    # Temperature off: T = 1.
    act_and_wait(page, lambda: page.uncheck("#use-temperature"))
    assert_shows(shown_bars(page), calibrated(z, 1.0, pi_custom))
    assert "T = 1.000" in page.text_content("#summary")

    select_prior(page, "uniform")
    assert_shows(shown_bars(page), calibrated(z, 1.0, None))
    assert not page.is_visible("#custom-prior")


def test_api_errors_are_shown(page: Any, server: str, digits: tuple[np.ndarray, np.ndarray]):
    open_page(page, server)
    wait_model_ready(page)
    text = b"this is a text file, not an image\n"
    upload(page, text, name="notes.txt", mime="text/plain")
    r = httpx.post(
        server + "/predict",
        json={"images": [base64.b64encode(text).decode()], "model": MODEL, "prior": "uniform"},
        timeout=30,
    )
    assert r.status_code == 422
    error = page.text_content("#error")
    assert page.is_visible("#error")
    assert error == f"Error 422: {r.json()['error']}"
    assert page.eval_on_selector_all("#bars > li", "rows => rows.length") == 0

    # A good image clears the error; an invalid custom prior shows the API's message.
    upload(page, encode(digits[0][0]))
    assert not page.is_visible("#error")
    assert len(shown_bars(page)) == 5
    select_prior(page, "custom")
    page.fill("#custom-prior", '{"0": -1}')
    act_and_wait(page, lambda: page.click("#custom-apply"))
    assert re.fullmatch(r"Error 422: invalid prior: .*-1.*", page.text_content("#error"))
    assert page.get_attribute("#error", "role") == "alert"


def test_auth_token_is_used_and_kept_for_the_session(
    page: Any, auth_server: str, digits: tuple[np.ndarray, np.ndarray]
):
    open_page(page, auth_server)
    page.wait_for_selector("#error:not([hidden])")
    assert "Error 401: missing bearer token" in page.text_content("#error")
    assert page.is_disabled("#model")

    page.fill("#token", "wrong-token")
    page.click("#token-save")
    page.wait_for_function(
        "() => document.getElementById('error').textContent.includes('invalid bearer token')"
    )
    assert page.is_disabled("#model")

    page.fill("#token", TOKEN)
    page.press("#token", "Enter")  # the form submits from the keyboard
    wait_model_ready(page)
    assert not page.is_visible("#error")
    assert page.evaluate("() => sessionStorage.getItem('rescom.demo.token')") == TOKEN
    png = encode(digits[0][0])
    upload(page, png)
    reference = api_predict(auth_server, png, token=TOKEN, prior="uniform", temperature=True)
    assert shown_bars(page)[0][1] == reference.json()["predictions"][0]["label"]

    page.reload()  # same tab: the token is still there
    wait_model_ready(page)
    assert page.input_value("#token") == TOKEN
    page.click("#token-clear")
    page.wait_for_selector("#error:not([hidden])")
    assert page.evaluate("() => sessionStorage.getItem('rescom.demo.token')") is None


def test_prior_chart_tracks_the_adaptive_estimate_and_resets(
    page: Any, server: str, digits: tuple[np.ndarray, np.ndarray], meta: dict[str, Any], artifacts: Path
):
    num_classes = len(meta["class_names"])
    with httpx.Client(base_url=server, timeout=30) as c:
        c.post(f"/v1/models/{MODEL}/prior/reset").raise_for_status()
        open_page(page, server)
        wait_model_ready(page)
        # one accuracy figure: the served one (calibrated, uniform prior), and the recipe's thresholds
        served_top1 = meta["metrics"]["served"]["top1"]
        assert f"test accuracy {served_top1:.1f} % (as served)" in page.text_content("#model-info")
        many, few = meta["metrics"]["thresholds"]["many"], meta["metrics"]["thresholds"]["few"]
        assert f"head n > {many}, medium {few} ≤ n ≤ {many}" in page.text_content("#shot-legend")
        wait_chart_n_seen(page, 0)
        train = chart_marks(page, "train")
        adaptive = chart_marks(page, "adaptive")
        assert [m["cls"] for m in train] == list(range(num_classes))
        assert [m["cls"] for m in adaptive] == list(range(num_classes))
        pi_train = prior_from_counts(meta["class_counts"])
        np.testing.assert_allclose([m["value"] for m in train], pi_train, rtol=1e-12)
        np.testing.assert_allclose([m["value"] for m in adaptive], 1.0 / num_classes, rtol=1e-12)
        # Log scale: height is linear in log10(pi) (and larger pi is higher up).
        ys = np.asarray([m["y"] for m in train])
        slope = np.diff(ys) / np.diff(np.log10(pi_train))
        np.testing.assert_allclose(slope, slope[0], rtol=1e-6)
        assert slope[0] < 0

        # Traffic from the tail classes (sent by another client): the page's live poll picks it up.
        images, labels = digits
        tail = images[labels >= 7][:60]
        files = [("file", (f"{i}.png", encode(img), "image/png")) for i, img in enumerate(tail)]
        c.post("/predict", files=files, params={"model": MODEL}).raise_for_status()
        wait_chart_n_seen(page, len(tail))
        state = c.get(f"/v1/models/{MODEL}/prior").json()
        assert state["n_seen"] == len(tail)
        adaptive = chart_marks(page, "adaptive")
        assert len(adaptive) == num_classes
        np.testing.assert_allclose([m["value"] for m in adaptive], state["adaptive"], rtol=1e-9)
        assert sum(state["adaptive"][7:]) > 0.5  # the estimate moved towards the tail
        # Label-shift monitoring: KL(adaptive || training prior) on the page equals the API's and the formula.
        kl = float(np.sum(np.asarray(state["adaptive"]) * np.log(np.asarray(state["adaptive"]) / pi_train)))
        assert state["kl_adaptive_train"] == pytest.approx(kl, rel=1e-9) and kl > 0.1
        page.wait_for_function(
            "kl => Math.abs(Number(document.getElementById('prior-divergence').dataset.kl) - kl) < 1e-9",
            arg=state["kl_adaptive_train"],
            timeout=15_000,
        )
        assert f"{kl:.3f} nats" in page.text_content("#prior-divergence")
        rows = page.eval_on_selector_all("#prior-table tbody tr", "rs => rs.length")
        assert rows == num_classes
        page.locator(".prior-panel").screenshot(path=str(artifacts / "prior_chart.png"))

        page.click("#reset-prior")
        wait_chart_n_seen(page, 0)
        assert c.get(f"/v1/models/{MODEL}/prior").json()["n_seen"] == 0
        np.testing.assert_allclose(
            [m["value"] for m in chart_marks(page, "adaptive")], 1.0 / num_classes, rtol=1e-12
        )


def test_page_is_accessible_and_fits_a_phone(page: Any, server: str, artifacts: Path):
    page.set_viewport_size({"width": 390, "height": 844})
    open_page(page, server)
    wait_model_ready(page)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.id)"""
    )
    assert unlabelled == []
    assert page.get_attribute("#summary", "aria-live") == "polite"
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
    # Keyboard: Tab reaches the controls in document order, starting with the skip link.
    order = []
    for _ in range(6):
        page.keyboard.press("Tab")
        order.append(page.evaluate("() => document.activeElement.id || document.activeElement.className"))
    assert order[:4] == ["skip-link", "token", "token-save", "token-clear"]
    assert "model" in order
    page.screenshot(path=str(artifacts / "phone.png"), full_page=True)
