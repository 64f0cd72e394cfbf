"""Image bytes -> model input, with every limit checked from the headers before any pixel is decoded.

Formats: JPEG, PNG, WebP, BMP and GIF (first frame). Two steps, so that the caller can decide where to run the
second one:

1. :func:`open_images` reads only the headers (``Image.open``): it refuses an image above ``max_pixels``
   (``width * height``) and a request whose images would take more than ``max_decoded_bytes`` once decoded
   (``width * height * bytes per pixel of the mode``, 16-bit modes included), both with 413. JPEGs much larger
   than the model input are set to decode at 1/2, 1/4 or 1/8 scale (``Image.draft``), and the estimate is
   taken at that scale. Cheap enough for the event loop.
2. :func:`decode_opened` decodes (blocking, Pillow), shrinks large images by an integer factor
   (:func:`rescom.preprocess.reduce_for`) before any mode conversion, applies the EXIF orientation, then
   :func:`rescom.preprocess.resize_center_crop` does mode -> RGB, resize and centre crop exactly as in
   evaluation. Peak memory per image stays near its decoded size in its own mode, never a float64 copy.

:func:`decoded_pixels` says how much work step 2 is: the routes decode inline only below
``INLINE_DECODE_PIXELS``, never by compressed size (a 3 KB PNG can hold 25 million pixels).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from rescom.preprocess import decoded_bytes_per_pixel, reduce_for, resize_center_crop, upright
from service.errors import PayloadTooLarge, Unprocessable

__all__ = [
    "ALLOWED_FORMATS",
    "INLINE_DECODE_PIXELS",
    "OpenedImage",
    "open_images",
    "decode_opened",
    "decoded_pixels",
    "decode_image",
    "decode_images",
]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
INLINE_DECODE_PIXELS = 128 * 128  # a request with fewer pixels in all is decoded on the event loop
# The explicit limits (``max_pixels``, ``max_decoded_bytes``) decide, not Pillow's warning threshold. One
# process-wide filter, set once: ``warnings.catch_warnings()`` per image costs a few microseconds, and it swaps
# the global filter list, which is not safe while the decoding pool runs other images in other threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass
class OpenedImage:
    """An image whose header was read and accepted, not yet decoded.

    Attributes:
        image: the Pillow image (lazy: no pixel decoded yet; JPEG draft scale already set).
        label: how the image is named in error messages.
        decoded_bytes: estimated bytes Pillow will hold for its pixels (at the draft scale).
    """

    image: Image.Image
    label: str
    decoded_bytes: int

    @property
    def pixels(self) -> int:
        """``width * height`` as it will be decoded."""
        return self.image.width * self.image.height


def _open(data: bytes, *, resize: int, max_pixels: int, label: str) -> OpenedImage:
    if not data:
        raise Unprocessable(f"{label} is empty (0 bytes)")
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
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise Unprocessable(f"{label} has a corrupt header: {err}") from None
    width, height = img.size
    if width < 1 or height < 1:
        img.close()
        raise Unprocessable(f"{label} has an empty size {width}x{height}")
    if width * height > max_pixels:
        img.close()
        raise PayloadTooLarge(
            f"{label} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
            "(RESCOM_MAX_IMAGE_PIXELS)"
        )
    if img.format == "JPEG" and min(width, height) >= 4 * resize:  # decode at 1/2..1/8 scale
        scale = 2 * resize / min(width, height)
        img.draft(img.mode, (max(1, int(width * scale)), max(1, int(height * scale))))
    per_pixel = decoded_bytes_per_pixel(img.mode) + (1 if img.mode == "1" else 0)  # "1" shrinks via "L"
    return OpenedImage(img, label, img.width * img.height * per_pixel)


def open_images(
    blobs: Sequence[bytes], *, resize: int, max_pixels: int, max_decoded_bytes: int
) -> list[OpenedImage]:
    """Read and check the headers of a request's images (no pixel decoded).

    Args:
        blobs: the encoded files.
        resize: the model's shorter-side resize (decides the JPEG draft scale).
        max_pixels: largest ``width * height`` accepted per image.
        max_decoded_bytes: largest estimated decoded size of all images of the request together.

    Returns:
        One :class:`OpenedImage` per blob, in order; close them with :func:`decode_opened` (or ``.image.close()``).

    Raises:
        Unprocessable: empty, unknown format or corrupt header (422).
        PayloadTooLarge: an image above ``max_pixels``, or the request above ``max_decoded_bytes`` (413).
    """
    many = len(blobs) > 1
    opened: list[OpenedImage] = []
    try:
        for i, data in enumerate(blobs):
            label = f"image {i}" if many else "image"
            opened.append(_open(data, resize=resize, max_pixels=max_pixels, label=label))
        total = sum(o.decoded_bytes for o in opened)
        if total > max_decoded_bytes:
            raise PayloadTooLarge(
                f"the images of this request would take {total} bytes once decoded; the limit is "
                f"{max_decoded_bytes} (RESCOM_MAX_DECODED_BYTES): send fewer or smaller images"
            )
    except BaseException:
        for o in opened:
            o.image.close()
        raise
    return opened


def decoded_pixels(opened: Sequence[OpenedImage]) -> int:
    """Pixels all images of a request will decode to (decides inline decode vs the decoding pool)."""
    return sum(o.pixels for o in opened)


def _decode_one(o: OpenedImage, resize: int, crop: int) -> np.ndarray:
    img = o.image
    try:
        img.load()  # the first frame of animated GIF/WebP
        small = reduce_for(img, resize)
        if small is img:
            return resize_center_crop(img, resize, crop, exif_transpose=True)  # [crop, crop, 3]
        return resize_center_crop(upright(small, orientation_of=img), resize, crop)  # [crop, crop, 3]
    except Image.DecompressionBombError as err:
        raise PayloadTooLarge(f"{o.label}: {err} (RESCOM_MAX_IMAGE_PIXELS)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise Unprocessable(
            f"{o.label} ({img.format}, {img.width}x{img.height}) is truncated or corrupt: {err}"
        ) from None


def decode_opened(opened: Sequence[OpenedImage], *, resize: int, crop: int) -> np.ndarray:
    """Decode and preprocess opened images into one batch uint8 ``[k, crop, crop, 3]`` (closes them).

    Raises:
        Unprocessable: truncated or corrupt pixel data (422), naming the image's position.
    """
    out = np.empty((len(opened), crop, crop, 3), dtype=np.uint8)
    try:
        for i, o in enumerate(opened):
            out[i] = _decode_one(o, resize, crop)
            o.image.close()
    finally:
        for o in opened:
            o.image.close()
    return out


def decode_image(data: bytes, *, resize: int, crop: int, max_pixels: int, label: str = "image") -> np.ndarray:
    """Decode one image and preprocess it for the model: uint8 ``[crop, crop, 3]`` (both steps at once)."""
    opened = _open(data, resize=resize, max_pixels=max_pixels, label=label)
    return decode_opened([opened], resize=resize, crop=crop)[0]


def decode_images(
    blobs: Sequence[bytes], *, resize: int, crop: int, max_pixels: int, max_decoded_bytes: int | None = None
) -> np.ndarray:
    """Decode several images into one batch uint8 ``[k, crop, crop, 3]``; errors name the image's position."""
    budget = max_decoded_bytes if max_decoded_bytes is not None else 2**63
    opened = open_images(blobs, resize=resize, max_pixels=max_pixels, max_decoded_bytes=budget)
    return decode_opened(opened, resize=resize, crop=crop)
