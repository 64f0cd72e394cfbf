"""Image preprocessing shared by training's evaluation, ONNX export and the service (Pillow + numpy only).

One definition keeps what is served identical to what was evaluated: any image mode is converted to RGB, the
shorter side is resized to ``resize`` with bilinear filtering, and the centre ``crop x crop`` square is kept.
Normalisation (mean/std) is not done here: it happens inside the exported ONNX graph.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

__all__ = ["to_rgb", "resize_center_crop", "resized_size"]


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """Return ``(w, h)`` after scaling so that the shorter side equals ``resize`` (aspect ratio kept)."""
    if resize <= 0:
        raise ValueError(f"resize must be a positive number of pixels, got {resize}")
    if width <= height:
        return resize, max(1, int(round(height * resize / width)))
    return max(1, int(round(width * resize / height))), resize


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Palette and transparent images are composited on white (so a transparent background does not turn black),
    16-bit and 32-bit grayscale are rescaled to 8 bits, CMYK and others go through Pillow's converters.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_center_crop(
    img: Image.Image, resize: int, crop: int, *, exif_transpose: bool = False
) -> np.ndarray:
    """Resize the shorter side to ``resize`` (bilinear), centre-crop ``crop x crop``, return uint8 RGB.

    Args:
        img: any Pillow image.
        resize: target length of the shorter side, in pixels.
        crop: side of the square centre crop; must not exceed ``resize``.
        exif_transpose: apply the EXIF orientation tag first (the service does; datasets are stored upright).

    Returns:
        ``np.ndarray`` of dtype uint8 and shape ``[crop, crop, 3]``.
    """
    if crop <= 0 or crop > resize:
        raise ValueError(f"crop must be in 1..resize ({resize}), got {crop}")
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    w, h = resized_size(img.width, img.height, resize)
    if (w, h) != img.size:
        img = img.resize((w, h), resample=Image.Resampling.BILINEAR)
    left = int(round((w - crop) / 2.0))
    top = int(round((h - crop) / 2.0))
    if (left, top, crop, crop) != (0, 0, w, h):
        img = img.crop((left, top, left + crop, top + crop))
    out = np.asarray(img, dtype=np.uint8)  # [crop, crop, 3]
    if out.shape != (crop, crop, 3):
        raise AssertionError(f"preprocess produced {out.shape}, expected {(crop, crop, 3)}")
    return out
