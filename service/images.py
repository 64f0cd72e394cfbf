"""Image bytes -> model input, with limits checked before the expensive work.

Formats: JPEG, PNG, WebP, BMP and GIF (first frame). The pixel count comes from the header (``Image.open`` reads
only that), so a decompression bomb is refused before any pixel is decoded. Then EXIF orientation is applied and
:func:`rescom.preprocess.resize_center_crop` does mode -> RGB, resize and centre crop exactly as in evaluation.

These functions are blocking (Pillow); the routes call them in the decoding thread pool.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from rescom.preprocess import resize_center_crop
from service.errors import PayloadTooLarge, Unprocessable

__all__ = ["ALLOWED_FORMATS", "decode_image", "decode_images"]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")


def decode_image(data: bytes, *, resize: int, crop: int, max_pixels: int, label: str = "image") -> np.ndarray:
    """Decode one image and preprocess it for the model.

    Args:
        data: the encoded file.
        resize: shorter-side length before the crop.
        crop: side of the square model input.
        max_pixels: largest ``width * height`` accepted.
        label: how the image is named in error messages (e.g. ``"image 2"``).

    Returns:
        uint8 ``[crop, crop, 3]``.

    Raises:
        Unprocessable: empty, unknown format, truncated or corrupt data (422).
        PayloadTooLarge: more than ``max_pixels`` pixels (413).
    """
    if not data:
        raise Unprocessable(f"{label} is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the explicit limit below decides
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise Unprocessable(
                f"{label} ({len(data)} bytes, starting {data[:8]!r}) is not an image in an accepted format; "
                f"send {', '.join(ALLOWED_FORMATS)}"
            ) from None
        except Image.DecompressionBombError as err:
            raise PayloadTooLarge(
                f"{label}: {err}; the limit here is {max_pixels} (RESCOM_MAX_IMAGE_PIXELS)"
            ) from None
        except (OSError, ValueError, SyntaxError) as err:
            raise Unprocessable(f"{label} has a corrupt header: {err}") from None
        width, height = img.size
        if width < 1 or height < 1:
            raise Unprocessable(f"{label} has an empty size {width}x{height}")
        if width * height > max_pixels:
            raise PayloadTooLarge(
                f"{label} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                "(RESCOM_MAX_IMAGE_PIXELS)"
            )
        try:
            img.load()  # the first frame of animated GIF/WebP
            return resize_center_crop(img, resize, crop, exif_transpose=True)  # [crop, crop, 3]
        except Image.DecompressionBombError as err:
            raise PayloadTooLarge(
                f"{label}: {err}; the limit here is {max_pixels} (RESCOM_MAX_IMAGE_PIXELS)"
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise Unprocessable(
                f"{label} ({img.format}, {width}x{height}) is truncated or corrupt: {err}"
            ) from None
        finally:
            img.close()


def decode_images(blobs: Sequence[bytes], *, resize: int, crop: int, max_pixels: int) -> np.ndarray:
    """Decode several images into one batch uint8 ``[k, crop, crop, 3]``; errors name the image's position."""
    out = np.empty((len(blobs), crop, crop, 3), dtype=np.uint8)
    many = len(blobs) > 1
    for i, data in enumerate(blobs):
        label = f"image {i}" if many else "image"
        out[i] = decode_image(data, resize=resize, crop=crop, max_pixels=max_pixels, label=label)
    return out
