"""Encoded image bytes -> an 8-bit RGB PIL image, the same way for every caller.

The service (`service/decode.py`, which adds its HTTP limits and error codes around it) and the
backlog scorer both turn bytes into RGB through here, so one image gets the same pixels, hence
the same decision, whichever way it is scored.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps


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


def decode_rgb(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> RGB PIL image; ValueError saying what was wrong (empty, undecodable, too many pixels)."""
    if not data:
        raise ValueError("empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except Exception as e:  # PIL raises many types on hostile headers
        raise ValueError(f"not a decodable image ({type(e).__name__})") from None
    w, h = img.size
    if w * h > max_pixels:  # checked from the header, before any pixel is decoded
        raise ValueError(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    try:
        return first_frame_rgb(img)
    except Exception as e:
        raise ValueError(f"{img.format} data is truncated or corrupt ({type(e).__name__})") from None
