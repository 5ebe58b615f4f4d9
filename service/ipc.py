"""The wire between the front-end processes and the engine process: ZeroMQ, msgpack frames.

One message per request, whatever its image count: a msgpack header plus one raw frame per
image (no base64, no copies into JSON). Answers come back the same way.

    front end  DEALER ── ipc://DIR/engine.sock ──> ROUTER  engine   (requests, answers)
    front end  SUB    <── ipc://DIR/status.sock ── PUB     engine   (status, every 100 ms)

Request header ops:
  * ``classify``: ``items`` (domain, content type, blob index or the error it already failed
    with), ``t0`` (the front end's perf_counter when the request arrived: the clock is
    system-wide), ``render`` (None or 'moderation');
  * ``http``: any other route, answered by the engine's full app (admin, review, /domains, /docs).

The status message is the engine's `Catalog` (generation, served domains and versions,
routable) plus `ready` and `draining`. A front end that sees the engine process exit (pidfd), or
no status for `STATUS_TIMEOUT_S`, fails every pending request with 503 `engine_unavailable` at
once and turns /readyz 503 (after a mere stall, until the status comes back).

Torch-free: this module is imported by the front ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from .errors import ApiError, timeout_error
from .items import Catalog, Item

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 0.1
STATUS_TIMEOUT_S = 5.0


def engine_address(ipc_dir: str | Path) -> str:
    return f"ipc://{Path(ipc_dir) / 'engine.sock'}"


def status_address(ipc_dir: str | Path) -> str:
    return f"ipc://{Path(ipc_dir) / 'status.sock'}"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def error_fields(err: ApiError) -> list:
    return [err.status, err.code, err.message, err.headers]


def error_from(fields: list) -> ApiError:
    return ApiError(fields[0], fields[1], fields[2], fields[3] or None)


def engine_unavailable() -> ApiError:
    return ApiError(503, "engine_unavailable", "the inference engine is not available; retry shortly",
                    {"Retry-After": "1"})


def encode_items(items: list[Item]) -> tuple[list[dict], list[bytes]]:
    """Items -> header entries and the image frames they point at."""
    heads, blobs = [], []
    for it in items:
        if it.error is not None:
            heads.append({"error": error_fields(it.error)})
            continue
        heads.append({"domain": it.domain, "content_type": it.content_type, "blob": len(blobs)})
        blobs.append(it.data)
    return heads, blobs


def decode_items(heads: list[dict], blobs: list[bytes]) -> list[Item]:
    return [Item(error=error_from(h["error"])) if "error" in h
            else Item(bytes(blobs[h["blob"]]), h["domain"], content_type=h["content_type"]) for h in heads]


def encode_answers(answers: list[Any]) -> list[Any]:
    return [{"error": error_fields(a)} if isinstance(a, ApiError) else {"answer": a} for a in answers]


def decode_answers(wire: list[dict]) -> list[Any]:
    return [error_from(w["error"]) if "error" in w else w["answer"] for w in wire]


class EngineClient:
    """A front end's side of the wire (service.state.Backend): one DEALER socket, replies matched by id."""

    def __init__(self, ipc_dir: str | Path, engine_pid: int | None, timeout_s: float, on_status=None):
        self.ipc_dir, self.engine_pid, self.timeout_s = Path(ipc_dir), engine_pid, timeout_s
        self.on_status = on_status or (lambda ready: None)  # called with the engine's readiness on every change
        self.catalog = Catalog()
        self.ready = False
        self.lost = False  # no status for STATUS_TIMEOUT_S (cleared when it comes back), or the process exited
        self._exited = False
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._last_status = time.monotonic()
        self._tasks: list[asyncio.Task] = []
        self._ctx = zmq.asyncio.Context()
        self._pidfd: int | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._req = self._ctx.socket(zmq.DEALER)
        self._req.setsockopt(zmq.LINGER, 0)
        self._req.setsockopt(zmq.SNDHWM, 0)
        self._req.setsockopt(zmq.RCVHWM, 0)
        self._req.connect(engine_address(self.ipc_dir))
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(status_address(self.ipc_dir))
        self._tasks = [asyncio.create_task(self._replies(), name="engine-replies"),
                       asyncio.create_task(self._status(), name="engine-status")]
        if self.engine_pid:
            with contextlib.suppress(OSError, AttributeError):  # pidfd: Linux 5.3+; else the status timeout
                self._pidfd = os.pidfd_open(self.engine_pid)
                asyncio.get_running_loop().add_reader(self._pidfd, self._engine_exited)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
        self._fail_pending(engine_unavailable())
        self._ctx.destroy(linger=0)

    # ------------------------------------------------------------------ Backend
    def view(self) -> Catalog:
        return self.catalog

    async def classify(self, view: Catalog, items: list[Item], t0: float, render: str | None = None) -> list[Any]:
        heads, blobs = encode_items(items)
        reply, _ = await self.call({"op": "classify", "items": heads, "t0": t0, "render": render}, blobs)
        return decode_answers(reply["answers"])

    async def http(self, request: dict, body: bytes) -> tuple[dict, bytes]:
        """Another route's request (method, path, query, headers) -> the engine app's status, headers, body."""
        reply, frames = await self.call({"op": "http", **request}, [body])
        return reply, bytes(frames[0]) if frames else b""

    async def call(self, header: dict, blobs: list[bytes]) -> tuple[dict, list]:
        if self.lost:
            raise engine_unavailable()
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self._req.send_multipart([pack({"id": rid, **header}), *blobs], copy=False)
            async with asyncio.timeout(self.timeout_s):
                reply, frames = await fut
        except TimeoutError:
            raise timeout_error(self.timeout_s) from None
        finally:
            self._pending.pop(rid, None)
        if "error" in reply:
            raise error_from(reply["error"])
        return reply, frames

    # ------------------------------------------------------------------ background
    async def _replies(self) -> None:
        while True:
            frames = await self._req.recv_multipart(copy=False)
            header = unpack(frames[0].bytes)
            fut = self._pending.get(header["id"])
            if fut is not None and not fut.done():
                fut.set_result((header, [f.buffer for f in frames[1:]]))

    async def _status(self) -> None:
        while True:
            try:
                msg = unpack(await asyncio.wait_for(self._sub.recv(), STATUS_TIMEOUT_S))
            except TimeoutError:
                if self.ready or self._pending:
                    log.error("no status from the engine for %.1f s", STATUS_TIMEOUT_S)
                    self._engine_lost()
                continue
            self._last_status = time.monotonic()
            if self.lost and not self._exited:  # a stall, not a death: the engine speaks again
                log.warning("the engine is publishing its status again")
                self.lost = False
            self.catalog = Catalog(msg["generation"], msg["domains"], msg["routable"])
            ready = bool(msg["ready"]) and not msg["draining"] and not self.lost
            if ready != self.ready:
                self.ready = ready
                self.on_status(ready)

    def _engine_exited(self) -> None:
        log.error("the engine process (pid %s) exited", self.engine_pid)
        self._exited = True
        asyncio.get_running_loop().remove_reader(self._pidfd)
        self._engine_lost()

    def _engine_lost(self) -> None:
        self.lost = True
        if self.ready:
            self.ready = False
            self.on_status(False)
        self._fail_pending(engine_unavailable())

    def _fail_pending(self, err: ApiError) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
