"""`python -m service.engine_server`: the engine process of the multi-process layout (service.supervisor).

It owns the model, the bundles, the batching engine, the decoders, the router, the review
writer and the store poller: the whole app of service.main, started through its own lifespan.
It takes no HTTP connections. Front ends (service.frontend) send it one message per request
over ZeroMQ (service.ipc): `classify` runs the same pipeline as the one-process server
(service.pipeline.LocalBackend); `http` runs any other route through the app itself, as if it
had arrived over HTTP. Every 100 ms it publishes its status (ready, draining, the served
domains).

SIGTERM (sent by the supervisor once the front ends have drained): stop taking messages,
answer the ones in flight, then the app's own shutdown drains the batching queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

import zmq
import zmq.asyncio

from .errors import ApiError
from .ipc import (
    STATUS_INTERVAL_S,
    decode_items,
    encode_answers,
    engine_address,
    error_fields,
    pack,
    status_address,
    unpack,
)

log = logging.getLogger("service.engine")


class EngineServer:
    def __init__(self, app, ipc_dir: str):
        self.app, self.state = app, app.state.service
        self.ipc_dir = ipc_dir
        self.ctx = zmq.asyncio.Context()
        self.handling: set[asyncio.Task] = set()

    def status(self) -> dict:
        st = self.state
        snap = st.registry.snapshot if st.registry is not None else None
        return {"pid": os.getpid(), "ready": st.ready, "draining": st.draining,
                "generation": snap.generation if snap else -1,
                "domains": {d: e.version for d, e in snap.domains.items()} if snap else {},
                "routable": bool(snap and snap.routable)}

    async def publish_status(self, pub) -> None:
        while True:
            await pub.send(pack(self.status()))
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def serve(self, stop: asyncio.Event) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(engine_address(self.ipc_dir))
        pub = self.ctx.socket(zmq.PUB)
        pub.bind(status_address(self.ipc_dir))
        publisher = asyncio.create_task(self.publish_status(pub))
        receiving = asyncio.create_task(self.receive(sock))
        await stop.wait()
        self.state.draining, self.state.ready = True, False
        receiving.cancel()
        if self.handling:  # answers for every message already taken
            await asyncio.wait(self.handling, timeout=self.state.settings.drain_timeout_s)
        await pub.send(pack(self.status()))
        publisher.cancel()
        for t in (publisher, receiving):
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def receive(self, sock) -> None:
        while True:
            frames = await sock.recv_multipart(copy=False)
            task = asyncio.create_task(self.handle(sock, frames))
            self.handling.add(task)
            task.add_done_callback(self.handling.discard)

    async def handle(self, sock, frames: list) -> None:
        ident, header = frames[0].bytes, unpack(frames[1].bytes)
        blobs = [f.buffer for f in frames[2:]]
        reply: dict[str, Any] = {"id": header["id"]}
        out: list = []
        try:
            if header["op"] == "classify":
                st = self.state
                if st.backend is None or st.draining:
                    raise ApiError(503, "not_ready", "the engine is starting or draining; retry shortly",
                                   {"Retry-After": "1"})
                items = decode_items(header["items"], blobs)
                answers = await st.backend.classify(st.backend.view(), items, header["t0"], header["render"])
                reply["answers"] = encode_answers(answers)
            elif header["op"] == "http":
                status, headers, body, route = await self.asgi(header, bytes(blobs[0]) if blobs else b"")
                reply.update(status=status, headers=headers, route=route)
                out = [body]
            else:
                raise ApiError(400, "bad_request", f"unknown engine operation {header['op']!r}")
        except ApiError as e:
            reply = {"id": header["id"], "error": error_fields(e)}
        except Exception:
            log.exception("engine message %r failed", header.get("op"))
            reply = {"id": header["id"], "error": error_fields(ApiError(500, "internal_error",
                                                                         "internal server error; see the server log"))}
        await sock.send_multipart([ident, pack(reply), *out], copy=False)

    async def asgi(self, req: dict, body: bytes) -> tuple[int, list, bytes, str | None]:
        """One HTTP request through the engine's app (no socket): its status, headers, whole body and route."""
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": req["method"],
                 "scheme": "http", "path": req["path"], "raw_path": req["path"].encode(), "root_path": "",
                 "query_string": req["query"].encode(), "headers": [(k.encode(), v.encode()) for k, v in req["headers"]],
                 "client": tuple(req["client"]) if req.get("client") else None, "server": None, "state": {},
                 "proxied": True}
        sent = False
        start: dict = {}
        chunks: list[bytes] = []

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects from here

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        route = getattr(scope.get("route"), "path", None)  # the template, for the front end's metrics
        return start.get("status", 500), [[k.decode(), v.decode()] for k, v in start.get("headers", [])], \
            b"".join(chunks), route


async def run(app, ipc_dir: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = EngineServer(app, ipc_dir)
    async with app.router.lifespan_context(app):
        await server.serve(stop)
    server.ctx.destroy(linger=0)


def main() -> None:
    from .main import create_app
    from .settings import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    try:
        asyncio.run(run(app, os.environ["MODERATION_IPC_DIR"]))
    except RuntimeError as e:  # startup failed; the log says why
        if str(e).startswith("startup failed"):
            sys.exit(3)
        raise


if __name__ == "__main__":
    main()
