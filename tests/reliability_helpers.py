"""Shared by the reliability tests: which model to serve, clean-error checks, crafted files.

The service as a subprocess: :func:`rescom_dev.servers.service_process`.

Nothing here imports torch.
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

from rescom_dev.onnx_models import write_version

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models"
BUNDLED_NAME = "digits_lt"

# What must never appear in a response body: Python tracebacks, source file references, server paths.
LEAK_MARKERS = (
    "Traceback",
    'File "',
    '.py"',
    ".py:",
    "/work/",
    "/home/",
    "/tmp/",
    "site-packages",
    str(ROOT),
)


def model_repository(tmp: Path) -> tuple[Path, str]:
    """The bundled trained model (``models/digits_lt``) when the checkout has it, else the tiny test model."""
    if (BUNDLED / BUNDLED_NAME).is_dir():
        return BUNDLED, BUNDLED_NAME
    write_version(tmp, "tiny", 1)
    return tmp, "tiny"


def leaks(text: str) -> list[str]:
    """The leak markers found in ``text`` (empty when clean)."""
    return [m for m in LEAK_MARKERS if m in text]


def assert_clean_error(r: httpx.Response, status: int, fragment: str = "") -> None:
    """``r`` has ``status`` and a JSON body ``{"error": "...fragment..."}`` that leaks nothing."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], str), body
    assert fragment in body["error"], (fragment, body["error"])
    assert not leaks(r.text), (leaks(r.text), r.text[:300])


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` RGB pixels (a decompression bomb's header).

    Only a few compressed rows follow, so nothing large is ever allocated here; a decoder that trusted the header
    would try to allocate ``3 * width * height`` bytes.
    """

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)) * 4)  # 4 (short) rows of zeros
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def probs_of(prediction: dict, num_classes: int) -> np.ndarray:
    """Class-indexed scores of one ``/predict`` prediction (``top_k`` must be ``num_classes``)."""
    p = np.zeros(num_classes)
    for entry in prediction["top_k"]:
        p[entry["class_id"]] = entry["score"]
    return p


def wait_until(predicate, timeout: float, what: str):
    """Poll ``predicate`` every 20 ms until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
