"""promptclip.images.decode_rgb: the one decode and accepted-format list, with the service's stable codes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from promptclip.images import ACCEPTED_FORMATS, ImageRejected, decode_rgb, load_rgb


def _encoded(fmt: str, size=(32, 24), mode="RGB", **kw) -> bytes:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_accepted_formats_decode_to_rgb(fmt):
    assert fmt in ACCEPTED_FORMATS
    img = decode_rgb(_encoded(fmt))
    assert img.mode == "RGB" and img.size == (32, 24)


@pytest.mark.parametrize(("data", "code", "status"), [
    (b"", "empty_image", 400),
    (b"just some text, not an image\n", "undecodable_image", 400),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "unsupported_format", 415),
    (None, "unsupported_format", 415),  # a real TIFF
])
def test_refusals_carry_the_services_code(data, code, status):
    data = _encoded("TIFF") if data is None else data
    with pytest.raises(ImageRejected) as e:
        decode_rgb(data)
    assert (e.value.code, e.value.status) == (code, status)
    assert isinstance(e.value, ValueError) and "Error" not in str(e.value)
    if code == "unsupported_format":
        assert "JPEG, PNG, WebP" in e.value.message  # says what is accepted


def test_limits_bytes_pixels_side():
    png = _encoded("PNG", size=(40, 30))
    with pytest.raises(ImageRejected, match="limit is 10 bytes") as e:
        decode_rgb(png, max_bytes=10)
    assert e.value.code == "image_too_large" and e.value.status == 413
    with pytest.raises(ImageRejected) as e:
        decode_rgb(png, max_pixels=1000)
    assert e.value.code == "too_many_pixels"
    with pytest.raises(ImageRejected) as e:
        decode_rgb(png, min_side=31)
    assert e.value.code == "degenerate_image"
    jpeg = _encoded("JPEG", size=(64, 64))
    truncated = jpeg[:len(jpeg) // 2]
    with pytest.raises(ImageRejected) as e:
        decode_rgb(truncated)
    assert e.value.code == "undecodable_image" and "truncated or corrupt" in e.value.message


def test_alpha_on_white_16bit_and_exif(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert np.asarray(decode_rgb(buf.getvalue())).min() == 255  # transparent -> white
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(buf, "PNG")
    assert np.asarray(decode_rgb(buf.getvalue())).min() == 255  # 16-bit white stays white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (40, 20)).save(path, "JPEG", exif=exif)
    assert load_rgb(path).size == (20, 40)  # EXIF orientation applied


def test_load_rgb_names_the_file(tmp_path):
    path = tmp_path / "scan.tif"
    path.write_bytes(_encoded("TIFF"))
    with pytest.raises(ImageRejected, match="scan.tif: TIFF images are not supported") as e:
        load_rgb(path)
    assert e.value.code == "unsupported_format"
