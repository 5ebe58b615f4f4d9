"""Encoded image bytes -> an 8-bit RGB PIL image, the same way for every caller.

Training (`training/data.py`), export, the service (`service/decode.py`, which maps the refusal
to its HTTP error) and the backlog scorer all decode through `decode_rgb`, so one image gets the
same pixels, hence the same decision, whichever way it is scored:

- one accepted-format list (`ACCEPTED_FORMATS`): JPEG, PNG, WebP, GIF (first frame), BMP;
- limits checked from the header before any pixel is decoded (bytes, pixels: decompression bombs);
- EXIF orientation applied, transparency composited on white, 16-bit rescaled to 8-bit, first frame.

A refused image raises `ImageRejected` (a ValueError) carrying the service's HTTP status and
stable error `code`, so an offline error row says what `/classify` would have answered.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL format -> the name a message uses. The one list of what is served; everything else is a 415.
ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}
ACCEPTED = "JPEG, PNG, WebP, GIF (first frame), BMP"
# File suffixes of those formats: how a folder listing tells an image from another file.
ACCEPTED_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp")
DEFAULT_MAX_PIXELS = 40_000_000  # the service's MAX_IMAGE_PIXELS default
# Formats recognised but not served: a 415 names them rather than calling them undecodable.
_OTHER_MAGIC = {b"%PDF": "PDF", b"<svg": "SVG", b"<?xm": "XML/SVG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
                b"\x00\x00\x01\x00": "ICO", b"8BPS": "PSD"}

# The stable codes (and HTTP statuses) a refused image gets, from the service and the backlog alike.
EMPTY, UNDECODABLE, UNSUPPORTED = "empty_image", "undecodable_image", "unsupported_format"
TOO_LARGE, TOO_MANY_PIXELS, DEGENERATE = "image_too_large", "too_many_pixels", "degenerate_image"
STATUS = {EMPTY: 400, UNDECODABLE: 400, UNSUPPORTED: 415, TOO_LARGE: 413, TOO_MANY_PIXELS: 413, DEGENERATE: 400}


class ImageRejected(ValueError):
    """An image that cannot be scored: `code` is the service's stable error code, `status` its HTTP status."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message, self.status = code, message, STATUS[code]

    def __str__(self) -> str:
        return self.message


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16/32-bit is rescaled."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if img.mode.startswith("I") and arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        else:
            arr = arr * (255.0 / hi)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def first_frame_rgb(img: Image.Image) -> Image.Image:
    """An opened image -> its first frame fully decoded, EXIF-oriented, in RGB (raises on corrupt data)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img.seek(0)  # GIF / animated WebP: the first frame
        img.load()  # full decode: truncated or corrupt data fails here
        return to_rgb(ImageOps.exif_transpose(img))


def _sniff_other(data: bytes) -> str | None:
    head = data[:4]
    if head in _OTHER_MAGIC:
        return _OTHER_MAGIC[head]
    if data[4:8] == b"ftyp":
        return data[8:12].decode("latin-1").strip() or "ISO-BMFF"  # heic, avif, mp4 ...
    return None


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *, max_bytes: int | None = None,
               min_side: int = 1) -> Image.Image:
    """Bytes -> RGB PIL image: the one decode of training, export, the service and the backlog.

    Checks, in order: byte count (`max_bytes`; None: no limit), empty, format sniffed from the
    header (only `ACCEPTED_FORMATS`), pixel count from the header (before any pixel is decoded),
    smallest side, full decode. Raises `ImageRejected` saying what was wrong and what is accepted.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageRejected(TOO_LARGE, f"image is {len(data)} bytes; the limit is {max_bytes} bytes")
    if not data:
        raise ImageRejected(EMPTY, "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        other = _sniff_other(data)
        if other:
            raise ImageRejected(UNSUPPORTED, f"{other} images are not supported; send {ACCEPTED}") from None
        raise ImageRejected(UNDECODABLE, f"not a decodable image; send {ACCEPTED}") from None
    except Image.DecompressionBombError:
        raise ImageRejected(TOO_MANY_PIXELS, f"image has too many pixels (limit {max_pixels})") from None
    except Exception:  # PIL raises many types on hostile headers
        raise ImageRejected(UNDECODABLE, f"could not read the image header; send {ACCEPTED}") from None
    if img.format not in ACCEPTED_FORMATS:
        raise ImageRejected(UNSUPPORTED, f"{img.format} images are not supported; send {ACCEPTED}")
    w, h = img.size
    if w * h > max_pixels:
        raise ImageRejected(TOO_MANY_PIXELS, f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    if min(w, h) < min_side:
        raise ImageRejected(DEGENERATE, f"image is {w}x{h}; each side must be at least {min_side} pixels")
    try:
        return first_frame_rgb(img)
    except Image.DecompressionBombError:
        raise ImageRejected(TOO_MANY_PIXELS, f"image has too many pixels (limit {max_pixels})") from None
    except Exception:
        raise ImageRejected(UNDECODABLE, f"{ACCEPTED_FORMATS[img.format]} data is truncated or corrupt") from None


def load_rgb(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file -> RGB through `decode_rgb`; ImageRejected names the file."""
    data = Path(path).read_bytes()
    try:
        return decode_rgb(data, max_pixels)
    except ImageRejected as e:
        raise ImageRejected(e.code, f"{path}: {e.message}") from None
