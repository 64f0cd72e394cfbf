"""Image preprocessing shared by training's evaluation, ONNX export and the service (Pillow + numpy only).

One definition keeps what is served identical to what was evaluated: any image mode is converted to RGB, the
shorter side is resized to ``resize`` with bilinear filtering, and the centre ``crop x crop`` square is kept.
Normalisation (mean/std) is not done here: it happens inside the exported ONNX graph.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["to_rgb", "upright", "resize_center_crop", "resized_size", "reduce_for", "decoded_bytes_per_pixel"]

WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # rescaled to 8 bits by :func:`to_rgb`
ROWS_PER_CHUNK = 256  # rows of a wide-mode image converted at a time (bounds the float64 temporaries)
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright (the table of ``ImageOps.exif_transpose``)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright(img: Image.Image, orientation_of: Image.Image | None = None) -> Image.Image:
    """``img`` turned by the EXIF orientation tag of ``orientation_of`` (default: ``img`` itself).

    The same pixels as ``ImageOps.exif_transpose``, without its copy of an image that is already upright (the
    common case, and a measurable share of decoding a small image). ``orientation_of`` lets a shrunk copy be
    turned by the tag of the file it came from.
    """
    transpose = _UPRIGHT.get((orientation_of or img).getexif().get(EXIF_ORIENTATION, 1))
    return img if transpose is None else img.transpose(transpose)


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
    if img.mode in WIDE_MODES:
        return _wide_to_rgb(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit grayscale -> 8-bit RGB: ``I;16*`` maps 0..65535 to 0..255, ``I``/``F`` their min..max.

    Converted ``ROWS_PER_CHUNK`` rows at a time, so the float64 temporaries stay a few MiB whatever the image
    size (same arithmetic as converting the whole array at once: the result is bit-identical).
    """
    arr = np.asarray(img)  # [H, W] uint16 / int32 / float32
    if img.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
    out = np.zeros(arr.shape, dtype=np.uint8)  # [H, W]
    if hi > lo:
        scale = 255.0 / (hi - lo)
        for top in range(0, arr.shape[0], ROWS_PER_CHUNK):
            rows = arr[top : top + ROWS_PER_CHUNK].astype(np.float64)  # [<=256, W]
            out[top : top + ROWS_PER_CHUNK] = np.clip(np.rint((rows - lo) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L").convert("RGB")


def decoded_bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow holds per pixel once an image of ``mode`` is decoded (multi-band modes use 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def reduce_for(img: Image.Image, resize: int) -> Image.Image:
    """Shrink a decoded image by an integer factor while its shorter side stays >= ``2 * resize``.

    For images much larger than the model input: the final bilinear resize then starts from at most twice its
    output size, and mode conversions (:func:`to_rgb`) run on the small image. Images less than 4x the target
    come back unchanged (so ordinary inputs are preprocessed exactly as in evaluation). Box filter where
    Pillow's ``reduce`` supports the mode; ``1`` goes through ``L``; palette images use nearest (their colours
    are indices).
    """
    factor = min(img.width, img.height) // (2 * resize)
    if factor < 2:
        return img
    size = (max(1, img.width // factor), max(1, img.height // factor))
    if img.mode == "1":
        img = img.convert("L")
    if img.mode == "P":
        return img.resize(size, Image.Resampling.NEAREST)
    if img.mode.startswith("I;16"):
        return img.resize(size, Image.Resampling.BOX)
    return img.reduce(factor)


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
        img = upright(img)
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
