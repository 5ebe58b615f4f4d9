"""Untrusted image bytes -> a preprocessed tensor, with limits checked before the expensive work.

Order of checks: byte count (413), format sniffed from the header (415 / 400), pixel count
from the header before any pixel is decoded (413: decompression bombs), degenerate size (400),
full decode (400 if truncated or corrupt), EXIF orientation, mode -> RGB, model preprocess.
Runs in a thread pool (`ImageDecoder.decode`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image
from torch import Tensor

from promptclip.images import ACCEPTED, ACCEPTED_FORMATS, ImageRejected, decode_rgb

if TYPE_CHECKING:
    from promptclip.device_decode import DeviceJpegPreprocessor

from .errors import ApiError, timeout_error
from .threads import named_pool

SUPPORTED = ACCEPTED_FORMATS  # the one accepted-format list (promptclip.images), shared with the backlog
__all__ = ["ACCEPTED", "SUPPORTED", "ImageDecoder", "decode_image"]


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, min_side: int = 1) -> Image.Image:
    """Bytes -> RGB PIL image, or ApiError (400, 413, 415) saying what was wrong and what is accepted.

    The decode and its error codes are promptclip.images.decode_rgb's, shared with training and
    the backlog; this only turns a refusal into the HTTP error.
    """
    try:
        return decode_rgb(data, max_pixels, max_bytes=max_bytes, min_side=min_side)
    except ImageRejected as e:
        raise ApiError(e.status, e.code, e.message) from None


class ImageDecoder:
    """Decodes and preprocesses images in a dedicated thread pool."""

    def __init__(self, preprocess: Callable[[Image.Image], Tensor], *, max_bytes: int, max_pixels: int,
                 min_side: int, workers: int, device_jpeg: DeviceJpegPreprocessor | None = None,
                 max_pending: int | None = None, timeout_s: float | None = None, retry_after_s: int = 1,
                 on_cpu: Callable[[float], None] | None = None):
        self.preprocess = preprocess
        self.limits = dict(max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side)
        self.pool = named_pool("decode", workers)
        self.workers = workers
        self.device_jpeg = device_jpeg  # plain JPEGs -> model input on the GPU (promptclip.device_decode), else None
        # Decoding is CPU-bound: unbounded, a flood of uploads would queue here (holding their bytes,
        # outside the request timeout) and the model queue would never get to answer 503.
        self.max_pending, self.timeout_s, self.retry_after_s = max_pending, timeout_s, retry_after_s
        self.pending = 0  # decodes submitted and not finished; touched only on the event loop
        self.on_cpu = on_cpu  # called (in the decode thread) with each decode's CPU seconds

    def _decode(self, data: bytes, device: bool = True) -> Tensor:
        t = time.thread_time()
        try:
            return self._decode_now(data, device)
        finally:
            if self.on_cpu is not None:
                self.on_cpu(time.thread_time() - t)

    def _decode_now(self, data: bytes, device: bool = True) -> Tensor:
        if device and self.device_jpeg is not None and 0 < len(data) <= self.limits["max_bytes"]:
            pixels = self.device_jpeg(data)  # None: not a plain JPEG within limits; PIL below says why
            if pixels is not None:
                return pixels
        img = decode_image(data, **self.limits)
        try:
            return self.preprocess(img)  # (3, H, W) float32
        except Exception:
            raise ApiError(400, "undecodable_image", "the image could not be preprocessed") from None

    async def decode(self, data: bytes, deadline: float | None = None) -> Tensor:
        """(3, H, W) preprocessed tensor; raises ApiError (also 503 when `max_pending` decodes are
        already waiting, 504 after `timeout_s` or once `deadline` (perf_counter) has passed)."""
        (out,) = await self.decode_many([data], deadline)
        if isinstance(out, ApiError):
            raise out
        return out

    async def decode_many(self, datas: list[bytes], deadline: float | None = None) -> list:
        """Per image, its (3, H, W) tensor or the ApiError it failed with; a request's images are decoded
        in at most `workers` pool jobs (one hand-off each, not one per image). 503 for the images beyond
        `max_pending` decodes waiting; 504 for all after `timeout_s` or past `deadline`."""
        timeout = self.timeout_s
        if deadline is not None:
            timeout = min(timeout or math.inf, deadline - time.perf_counter())
            if timeout <= 0:
                return [timeout_error(self.timeout_s or 0)] * len(datas)
        room = len(datas) if self.max_pending is None else max(0, min(len(datas), self.max_pending - self.pending))
        busy = [ApiError(503, "queue_full", "the server is at capacity; retry after the Retry-After delay",
                         {"Retry-After": str(self.retry_after_s)})] * (len(datas) - room)
        if not room:
            return busy
        loop = asyncio.get_running_loop()
        parts = min(self.workers, room)
        chunks = [datas[k:room:parts] for k in range(parts)]  # interleaved: equal shares of the work
        self.pending += room
        try:
            jobs = [loop.run_in_executor(self.pool, self._decode_all, c) for c in chunks]
            async with asyncio.timeout(timeout):  # decodes not started yet are cancelled
                done = [await jobs[0]] if parts == 1 else await asyncio.gather(*jobs)
        except TimeoutError:
            return [timeout_error(self.timeout_s or 0)] * len(datas)
        finally:
            self.pending -= room
        out: list = [None] * room
        for k, part in enumerate(done):
            out[k:room:parts] = part
        return out + busy

    def _decode_all(self, datas: list[bytes]) -> list:
        """A pool job: on the GPU path one batched nvjpeg call for the plain JPEGs, PIL for the rest."""
        fast: list = [None] * len(datas)
        if self.device_jpeg is not None:
            t = time.thread_time()
            fast = self.device_jpeg.many([d if 0 < len(d) <= self.limits["max_bytes"] else b"" for d in datas])
            if self.on_cpu is not None:
                self.on_cpu(time.thread_time() - t)
        out: list = []
        for data, pixels in zip(datas, fast, strict=True):
            try:
                out.append(pixels if pixels is not None else self._decode(data, device=False))
            except ApiError as e:
                out.append(e)
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
