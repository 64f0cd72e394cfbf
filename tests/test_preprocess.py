import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from rescom.preprocess import reduce_for, resize_center_crop, resized_size, to_rgb, upright


def test_shorter_side_resize_then_centre_crop():
    img = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8))
    assert resized_size(60, 40, 20) == (30, 20)
    out = resize_center_crop(img, 20, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    expected = np.asarray(img.resize((30, 20), Image.Resampling.BILINEAR).crop((7, 2, 23, 18)))
    np.testing.assert_array_equal(out, expected)


def test_identity_when_already_at_size():
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_center_crop(Image.fromarray(arr), 32, 32), arr)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_any_mode_becomes_rgb(mode):
    img = Image.new("RGB", (5, 7), (10, 200, 30)).convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (5, 7)


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert np.asarray(to_rgb(img)).tolist() == [[[255, 255, 255]] * 2] * 2


def test_exif_orientation_is_applied_when_asked():
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=100)
    decoded = Image.open(io.BytesIO(buf.getvalue()))
    assert resize_center_crop(decoded, 4, 2, exif_transpose=True).shape == (2, 2, 3)
    assert decoded.size == (4, 2)
    assert Image.open(io.BytesIO(buf.getvalue())).getexif()[0x0112] == 6


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_upright_gives_the_pixels_of_exif_transpose(orientation, fmt):
    arr = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, exif=exif)
    decoded = Image.open(io.BytesIO(buf.getvalue()))
    decoded.load()
    assert decoded.getexif().get(0x0112) == orientation  # the tag survived the file
    want = np.asarray(ImageOps.exif_transpose(decoded))
    np.testing.assert_array_equal(np.asarray(upright(decoded)), want)
    assert (upright(decoded) is decoded) == (orientation == 1)  # no copy of an upright image


def test_bad_sizes_are_refused():
    img = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="crop"):
        resize_center_crop(img, 4, 8)
    with pytest.raises(ValueError, match="resize"):
        resized_size(4, 4, 0)


def _reference_wide_to_rgb(img: Image.Image) -> np.ndarray:
    """The whole-array float64 conversion the chunked one replaced (kept here as the parity reference)."""
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = (0.0, 65535.0) if img.mode.startswith("I;16") else (float(arr.min()), float(arr.max()))
    scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)  # [H, W]
    return np.repeat(grey[..., None], 3, axis=2)  # [H, W, 3]


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(1).integers(0, 65536, (600, 301)).astype(np.uint16),  # I;16, several chunks
        np.random.default_rng(2).integers(-7000, 90000, (300, 520)).astype(np.int32),  # I
        np.random.default_rng(3).normal(0, 3, (515, 40)).astype(np.float32),  # F
        np.full((10, 10), 77, np.int32),  # constant: all zero
    ],
    ids=["I;16", "I", "F", "constant"],
)
def test_wide_modes_convert_bit_identically_in_chunks(array):
    img = Image.fromarray(array)
    np.testing.assert_array_equal(np.asarray(to_rgb(img)), _reference_wide_to_rgb(img))


def test_reduce_for_leaves_ordinary_images_alone_and_shrinks_large_ones():
    small = Image.new("RGB", (127, 200))
    assert reduce_for(small, 32) is small  # < 4x the resize: preprocessed exactly as in evaluation
    for mode in ("RGB", "L", "1", "P", "I;16", "I", "F", "RGBA"):
        big = Image.new("RGB", (1000, 700), (40, 90, 200)).convert(mode)
        out = reduce_for(big, 32)
        assert min(out.size) >= 64 and min(out.size) < 128 and out.size[0] > out.size[1], (mode, out.size)
        assert to_rgb(out).mode == "RGB"


def test_reduced_decode_stays_close_to_the_full_resolution_path():
    ramp = np.linspace(0, 65535, 1600, dtype=np.float64)
    arr = (ramp[None, :] * np.linspace(0.2, 1.0, 1200)[:, None]).astype(np.uint16)  # [1200, 1600] smooth
    img = Image.fromarray(arr)
    full = resize_center_crop(img, 32, 32).astype(np.int16)
    reduced = resize_center_crop(reduce_for(img, 32), 32, 32).astype(np.int16)
    assert np.abs(full - reduced).max() <= 3
