"""Screenshots of the demo page (``GET /``) for the documentation, taken in a headless system Chromium.

    python scripts/demo_screenshots.py                       # -> docs/screenshots/demo_*.png
    python scripts/demo_screenshots.py --out /tmp/shots --chromium /usr/bin/chromium

Starts the service on 127.0.0.1 with the bundled digits-LT model, sends it a backward long-tailed stream of
test digits (tail classes frequent) so that the adaptive prior has something to show, then uploads one test
digit whose prediction depends on the prior and captures the page under the uniform and the training prior,
the prior chart, and the phone layout. Needs the ``playwright`` package (no browser download: it drives the
system Chromium), torch and scikit-learn (the digits-LT split comes from ``rescom.data``).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from rescom.data import build_datasets  # noqa: E402
from rescom_dev.browser import CHROMIUM_ARGS, chromium_path  # noqa: E402
from rescom_dev.servers import free_port, running_server  # noqa: E402
from service.config import Settings  # noqa: E402

MODEL = "digits_lt"


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 ``[H, W, 3]`` image as PNG (lossless: the page sends exactly the test image)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_split() -> tuple[list[bytes], np.ndarray]:
    """The digits-LT test split as PNG files and labels (as scripts/digits_pngs.py writes them)."""
    test = build_datasets("digits_lt", None).test
    test.transform = None
    pairs = [test[i] for i in range(len(test))]
    return [png_bytes(np.asarray(img.convert("RGB"))) for img, _ in pairs], np.asarray([y for _, y in pairs])


def batches(items: list[bytes], size: int = 64) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def top1(client: httpx.Client, pngs: list[bytes], prior: str) -> np.ndarray:
    """Top-1 class of every image under ``prior`` (multipart requests of up to 64 images)."""
    out: list[int] = []
    for chunk in batches(pngs):
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(chunk)]
        r = client.post("/predict", files=files, params={"model": MODEL, "prior": prior, "top_k": 1})
        r.raise_for_status()
        out += [p["class_id"] for p in r.json()["predictions"]]
    return np.asarray(out)


def pick_example(client: httpx.Client, pngs: list[bytes], labels: np.ndarray) -> bytes:
    """A correctly classified test digit (uniform prior) whose top-1 changes under the training prior."""
    uniform, train = top1(client, pngs, "uniform"), top1(client, pngs, "train")
    candidates = np.flatnonzero((uniform == labels) & (train != uniform))
    if not candidates.size:
        candidates = np.flatnonzero(uniform == labels)
    return pngs[int(candidates[0])]


def send_backward_stream(client: httpx.Client, pngs: list[bytes], labels: np.ndarray) -> int:
    """Reset the adaptive prior, then send a backward long-tailed stream (class 9 most frequent, IF 10)."""
    client.post(f"/v1/models/{MODEL}/prior/reset").raise_for_status()
    classes = int(labels.max()) + 1
    stream: list[bytes] = []
    for c in range(classes):
        idx = np.flatnonzero(labels == c)
        n = max(1, int(len(idx) * 10.0 ** (-(classes - 1 - c) / (classes - 1))))
        stream += [pngs[i] for i in idx[:n]]
    for chunk in batches(stream):
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(chunk)]
        client.post("/predict", files=files, params={"model": MODEL}).raise_for_status()
    return len(stream)


def wait_prediction(page: Any, action: Any) -> None:
    before = int(page.get_attribute("#results", "data-seq") or 0)
    action()
    page.wait_for_function(
        "b => { const r = document.getElementById('results'); "
        "return Number(r.dataset.seq) > b && r.dataset.seq === r.dataset.started; }",
        arg=before,
    )


def capture(browser: Any, url: str, example: bytes, seen: int, out: Path) -> list[Path]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url + "/")
    page.wait_for_function(
        "n => document.getElementById('prior-stats').dataset.nSeen === String(n)", arg=seen
    )
    upload = {"name": "digit.png", "mimeType": "image/png", "buffer": example}
    wait_prediction(page, lambda: page.set_input_files("#file", files=[upload]))
    shots = [
        out / "demo_uniform.png",
        out / "demo_train.png",
        out / "demo_prior_chart.png",
        out / "demo_phone.png",
    ]
    page.screenshot(path=str(shots[0]), full_page=True)
    wait_prediction(page, lambda: page.check("#prior-train"))
    page.screenshot(path=str(shots[1]), full_page=True)
    page.locator(".prior-panel").screenshot(path=str(shots[2]))
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)  # let the chart redraw at the new width
    page.screenshot(path=str(shots[3]), full_page=True)
    page.close()
    return shots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--model-repository", type=Path, default=ROOT / "models")
    p.add_argument("--chromium", default=chromium_path() or "/usr/bin/chromium")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    pngs, labels = test_split()
    settings = Settings(
        model_repository=args.model_repository,
        model=MODEL,
        port=free_port(),
        poll_interval_s=0,
        log_level="warning",
    )
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        example = pick_example(client, pngs, labels)
        seen = send_backward_stream(client, pngs, labels)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                shots = capture(browser, url, example, seen, args.out)
            finally:
                browser.close()
    for path in shots:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
