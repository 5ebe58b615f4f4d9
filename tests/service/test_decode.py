"""Image decoding: every accepted format and mode, EXIF, limits checked before decoding."""

from __future__ import annotations

import struct
import zlib

import pytest

from service.decode import decode_image
from service.errors import ApiError

from .serving import image_bytes

LIMITS = dict(max_bytes=1_000_000, max_pixels=1_000_000, min_side=8)


@pytest.mark.parametrize("kind", ["jpeg", "png", "webp", "gif", "bmp", "cmyk", "gray", "palette", "rgba", "png16"])
def test_accepted_kinds_decode_to_rgb(kind):
    img = decode_image(image_bytes(kind), **LIMITS)
    assert img.mode == "RGB" and img.size == (64, 48)
    lo, hi = img.convert("L").getextrema()
    assert hi - lo > 50, "content survived the mode conversion"


def test_exif_orientation_is_applied():
    img = decode_image(image_bytes("exif"), **LIMITS)
    assert img.size == (48, 64)


def test_png16_is_rescaled_not_clipped():
    img = decode_image(image_bytes("png16"), **LIMITS)
    assert 80 < sum(img.convert("L").getdata()) / (64 * 48) < 180


def _status(data, **kw):
    with pytest.raises(ApiError) as e:
        decode_image(data, **{**LIMITS, **kw})
    return e.value.status, e.value.code


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_errors():
    assert _status(image_bytes("truncated")) == (400, "undecodable_image")
    assert _status(b"") == (400, "empty_image")
    assert _status(b"hello, this is not an image at all") == (400, "undecodable_image")
    assert _status(image_bytes("jpeg"), max_bytes=100) == (413, "image_too_large")
    assert _status(image_bytes("png", size=(4, 40))) == (400, "degenerate_image")
    assert _status(b"%PDF-1.4 not really") == (415, "unsupported_format")


def test_tiff_is_unsupported():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "TIFF")
    assert _status(buf.getvalue()) == (415, "unsupported_format")


def test_pixel_bomb_is_refused_from_the_header():
    """50k x 50k PNG in ~100 bytes: refused before any pixel is decoded."""
    assert _status(_png_header(50_000, 50_000), max_pixels=10_000_000) == (413, "too_many_pixels")
