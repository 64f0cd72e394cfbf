"""Synthetic test images: flat random colours plus noise (the tiny model tells classes apart by colour)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rescom_dev.onnx_models import CROP


def random_images(n: int, size: int = CROP, seed: int = 0) -> np.ndarray:
    """``n`` uint8 ``[size, size, 3]`` images, each a random flat colour plus noise (classes differ by colour)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    noise = rng.integers(-20, 21, (n, size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encode one uint8 ``[H, W, 3]`` image (lossless formats round-trip exactly)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()
