"""Images sent without a domain (or `auto`): bare-CLIP features -> the snapshot's domain router.

Routing costs one forward pass of the frozen image tower without prompts, before the image's
prompted pass. It runs in the engine's model thread (one model user at a time) and is batched
the same way as the engine's work: a route request joins a pending list, and one flush in the
model thread takes every request pending by then (up to MAX_BATCH) into one forward pass.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from promptclip.router import Route

from .errors import ApiError
from .items import no_router
from .registry import Snapshot


@dataclass(eq=False)
class _Pending:
    pixels: Tensor  # (3, H, W)
    snapshot: Snapshot
    future: asyncio.Future  # -> Route
    loop: asyncio.AbstractEventLoop


class DomainRouting:
    """Routes decoded images with their snapshot's router, in batched bare-CLIP forward passes."""

    def __init__(self, clip_model: torch.nn.Module, model_thread, max_batch: int, timeout_s: float = 30.0):
        self.model = clip_model
        self.thread = model_thread  # the engine's single model thread
        self.max_batch, self.timeout_s = max_batch, timeout_s
        p = next(clip_model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._scheduled = False

    async def route(self, images: list[Tensor], snapshot: Snapshot) -> list[Route]:
        """The domain each of `images` (3, H, W) is routed to, queued together so they share a forward
        pass; ApiError 422 when the snapshot has no usable router."""
        if not snapshot.routable:
            raise no_router(snapshot)
        loop = asyncio.get_running_loop()
        jobs = [_Pending(p, snapshot, loop.create_future(), loop) for p in images]
        with self._lock:
            self._pending.extend(jobs)
            submit = not self._scheduled
            self._scheduled = True
        if submit:
            try:
                self.thread.submit(self._flush)
            except RuntimeError:  # the model thread is shut down
                raise ApiError(503, "shutting_down", "the server is shutting down; retry on another replica",
                               {"Retry-After": "1"}) from None
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), self.timeout_s))
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no routing result within {self.timeout_s:g} s") from None

    def _flush(self) -> None:
        """Model thread: one forward pass over the requests pending now; reschedule if more remain."""
        with self._lock:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            if self._pending:
                self.thread.submit(self._flush)
            else:
                self._scheduled = False
        try:
            with torch.inference_mode():
                images = torch.stack([j.pixels.to(self.device) for j in batch]).to(self.dtype)  # (B, 3, H, W)
                feats = self.model.encode_image(images, normalize=True).float()  # (B, E)
                routes: list = [None] * len(batch)
                by_snapshot: dict[int, list[int]] = {}
                for i, j in enumerate(batch):
                    by_snapshot.setdefault(id(j.snapshot), []).append(i)
                for idx in by_snapshot.values():  # one call per snapshot (almost always one)
                    snap = batch[idx[0]].snapshot
                    for i, r in zip(idx, snap.router.route(feats[idx], list(snap.domains)), strict=True):
                        routes[i] = r
        except Exception as e:  # fan the failure out to every request of the batch
            err = ApiError(500, "inference_failed", f"the router failed on this batch ({type(e).__name__})")
            for j in batch:
                j.loop.call_soon_threadsafe(_settle, j.future, None, err)
            return
        for j, r in zip(batch, routes, strict=True):
            j.loop.call_soon_threadsafe(_settle, j.future, r, None)


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():  # the request timed out or was cancelled meanwhile
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def route_info(route: Route, router_version: str) -> dict:
    """The `routing` object of a routed answer."""
    return {"domain": route.domain, "confidence": round(route.confidence, 6), "low_confidence": route.low_confidence,
            "candidates": [{"domain": d, "probability": round(p, 6)} for d, p in route.candidates],
            "router": router_version}
