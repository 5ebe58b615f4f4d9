"""Untrusted image bytes -> a preprocessed tensor, with limits checked before the expensive work.

Order of checks: byte count (413), format sniffed from the header (415 / 400), pixel count
from the header before any pixel is decoded (413: decompression bombs), degenerate size (400),
full decode (400 if truncated or corrupt), EXIF orientation, mode -> RGB, model preprocess.
Runs in a thread pool (`ImageDecoder.decode`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError
from torch import Tensor

from promptclip.images import first_frame_rgb

from .errors import ApiError

SUPPORTED = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}
ACCEPTED = "JPEG, PNG, WebP, GIF (first frame), BMP"
# Formats we recognise but do not serve: a 415 says so rather than "undecodable".
_OTHER_MAGIC = {b"%PDF": "PDF", b"<svg": "SVG", b"<?xm": "XML/SVG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
                b"\x00\x00\x01\x00": "ICO", b"8BPS": "PSD"}


def _too_large_bytes(n: int, limit: int) -> ApiError:
    return ApiError(413, "image_too_large", f"image is {n} bytes; the limit is {limit} bytes")


def _sniff_other(data: bytes) -> str | None:
    head = data[:4]
    if head in _OTHER_MAGIC:
        return _OTHER_MAGIC[head]
    if data[4:8] == b"ftyp":
        return data[8:12].decode("latin-1").strip() or "ISO-BMFF"  # heic, avif, mp4 ...
    return None


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, min_side: int = 1) -> Image.Image:
    """Bytes -> RGB PIL image, or ApiError (400, 413, 415) saying what was wrong and what is accepted."""
    if len(data) > max_bytes:
        raise _too_large_bytes(len(data), max_bytes)
    if not data:
        raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        other = _sniff_other(data)
        if other:
            raise ApiError(415, "unsupported_format", f"{other} images are not supported; send {ACCEPTED}") from None
        raise ApiError(400, "undecodable_image", f"not a decodable image; send {ACCEPTED}") from None
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", f"image has too many pixels (limit {max_pixels})") from None
    except Exception:  # PIL raises many types on hostile headers
        raise ApiError(400, "undecodable_image", f"could not read the image header; send {ACCEPTED}") from None
    if img.format not in SUPPORTED:
        raise ApiError(415, "unsupported_format", f"{img.format} images are not supported; send {ACCEPTED}")
    w, h = img.size
    if w * h > max_pixels:
        raise ApiError(413, "too_many_pixels", f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    if min(w, h) < min_side:
        raise ApiError(400, "degenerate_image", f"image is {w}x{h}; each side must be at least {min_side} pixels")
    try:
        return first_frame_rgb(img)  # the same decode the offline scorers use
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", f"image has too many pixels (limit {max_pixels})") from None
    except Exception:
        raise ApiError(400, "undecodable_image", f"{SUPPORTED[img.format]} data is truncated or corrupt") from None


class ImageDecoder:
    """Decodes and preprocesses images in a dedicated thread pool."""

    def __init__(self, preprocess: Callable[[Image.Image], Tensor], *, max_bytes: int, max_pixels: int,
                 min_side: int, workers: int, device_jpeg: Callable[[bytes], Tensor | None] | None = None,
                 max_pending: int | None = None, timeout_s: float | None = None, retry_after_s: int = 1):
        self.preprocess = preprocess
        self.limits = dict(max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self.device_jpeg = device_jpeg  # plain JPEGs -> model input on the GPU (promptclip.device_decode), else None
        # Decoding is CPU-bound: unbounded, a flood of uploads would queue here (holding their bytes,
        # outside the request timeout) and the model queue would never get to answer 503.
        self.max_pending, self.timeout_s, self.retry_after_s = max_pending, timeout_s, retry_after_s
        self.pending = 0  # decodes submitted and not finished; touched only on the event loop

    def _decode(self, data: bytes) -> Tensor:
        if self.device_jpeg is not None and 0 < len(data) <= self.limits["max_bytes"]:
            pixels = self.device_jpeg(data)  # None: not a plain JPEG within limits; PIL below says why
            if pixels is not None:
                return pixels
        img = decode_image(data, **self.limits)
        try:
            return self.preprocess(img)  # (3, H, W) float32
        except Exception:
            raise ApiError(400, "undecodable_image", "the image could not be preprocessed") from None

    async def decode(self, data: bytes) -> Tensor:
        """(3, H, W) preprocessed tensor; raises ApiError (also 503 when `max_pending` decodes are
        already waiting, 504 after `timeout_s`)."""
        if self.max_pending is not None and self.pending >= self.max_pending:
            raise ApiError(503, "queue_full", "the server is at capacity; retry after the Retry-After delay",
                           {"Retry-After": str(self.retry_after_s)})
        self.pending += 1
        try:
            job = asyncio.get_running_loop().run_in_executor(self.pool, self._decode, data)
            return await asyncio.wait_for(job, self.timeout_s)  # a decode not started yet is cancelled
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"the image was not decoded within {self.timeout_s:g} s") from None
        finally:
            self.pending -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
