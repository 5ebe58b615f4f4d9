"""`python -m service.frontend`: one front-end process of the multi-process layout (service.supervisor).

Its own uvicorn on the service's port (SO_REUSEPORT: the kernel spreads connections over the
front ends). It runs the hot routes itself (/classify, /classify/batch, /v1/moderations: HTTP,
validation, the multipart / JSON / raw-body parse and the response), /healthz, /readyz and
/metrics, and hands images to the engine process as one message per request (service.ipc).
Every other route (admin, review, /domains, /docs, /openapi.json) is answered by the engine's
full app, so it behaves exactly as in one process. No torch and no model here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

from fastapi import FastAPI, Request, Response

from .errors import install_error_handlers
from .hotpath import HOT_ROUTES, HotRoutes
from .inputs import read_body
from .ipc import EngineClient
from .metrics import MetricsMiddleware, ServiceMetrics
from .routers import classify, health, metrics, moderations
from .settings import Settings, get_settings
from .state import ServiceState

log = logging.getLogger("service.frontend")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}


class ReadyMarks:
    """Readiness across the front ends: each marks itself ready in a folder of the runtime directory,
    and a front end's /readyz is 200 only while all `n` are marked. A request sent after a 200 then
    lands on a ready front end, whichever one the kernel picks (SO_REUSEPORT)."""

    def __init__(self, folder: Path, n: int):
        self.folder, self.n = folder, n
        self.mine = folder / str(os.getpid())
        folder.mkdir(exist_ok=True)

    def mark(self, ready: bool) -> None:
        if ready:
            self.mine.touch()
        else:
            self.mine.unlink(missing_ok=True)

    def all_ready(self) -> bool:
        return sum(1 for _ in self.folder.iterdir()) >= self.n


def create_frontend_app(settings: Settings, ipc_dir: str, engine_pid: int | None) -> FastAPI:
    marks = ReadyMarks(Path(ipc_dir) / "ready", settings.resolved_workers())
    state = ServiceState(settings=settings, metrics=ServiceMetrics(), siblings_ready=marks.all_ready)
    client = EngineClient(ipc_dir, engine_pid, timeout_s=settings.request_timeout_s + 5.0,
                          on_status=lambda ready: _set_ready(state, client, marks, ready))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await client.start()
        try:
            yield
        finally:
            state.draining, state.ready = True, False
            marks.mark(False)
            await client.close()

    app = FastAPI(title="Content moderation API (front end)", lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.service = state
    app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app)
    for r in (classify.router, moderations.router, health.router, metrics.router):
        app.include_router(r)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                   include_in_schema=False)
    async def engine_route(request: Request) -> Response:
        """Any other route: the engine's app answers it."""
        body = await read_body(request, 64 * 1024 * 1024, settings.body_timeout_s)
        head, data = await client.http({"method": request.method, "path": request.url.path,
                                        "query": request.url.query, "client": list(request.client or ()),
                                        "headers": [[k, v] for k, v in request.headers.items()]}, body)
        headers = {k: v for k, v in head["headers"] if k.lower() not in _HOP}
        if head.get("route"):  # the metrics middleware labels the request with the engine's route template
            request.scope["route"] = SimpleNamespace(path=head["route"])
        return Response(data, status_code=head["status"], headers=headers)

    app.add_middleware(HotRoutes, state=state, routes=HOT_ROUTES)  # inside the metrics middleware
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _set_ready(state: ServiceState, client: EngineClient, marks: ReadyMarks, ready: bool) -> None:
    if ready:
        state.backend = client
    state.ready = ready and not state.draining
    marks.mark(state.ready)


def listening_socket(host: str, port: int) -> socket.socket:
    """The service's port, shared with the other front ends (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main() -> None:
    import uvicorn

    from .__main__ import draining_server

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pid = os.environ.get("MODERATION_ENGINE_PID")
    app = create_frontend_app(settings, os.environ["MODERATION_IPC_DIR"], int(pid) if pid else None)
    config = uvicorn.Config(app, log_level=settings.log_level.lower(), access_log=settings.access_log,
                            timeout_graceful_shutdown=int(settings.drain_timeout_s), proxy_headers=False)
    server = draining_server(config, app.state.service)
    with contextlib.closing(listening_socket(settings.host, settings.port)) as sock:
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)


if __name__ == "__main__":
    main()
