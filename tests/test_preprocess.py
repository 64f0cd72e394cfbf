import io

import numpy as np
import pytest
from PIL import Image

from rescom.preprocess import resize_center_crop, resized_size, to_rgb


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


def test_bad_sizes_are_refused():
    img = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="crop"):
        resize_center_crop(img, 4, 8)
    with pytest.raises(ValueError, match="resize"):
        resized_size(4, 4, 0)
