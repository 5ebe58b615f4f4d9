"""The hot routes' short dispatch: POST /classify, /classify/batch and /v1/moderations go straight to
their endpoint functions, past FastAPI's routing and dependency machinery.

Per request, that machinery (route matching over every route, the dependency solver, the
exception middleware, the body-limit and telemetry wrappers) costs about as much CPU as
everything else the server does for a small image. The endpoints are the same functions the
FastAPI routes call (service.routers), so they validate, answer and fail exactly alike; the
OpenAPI schema still comes from the routes. Errors leave through the app's one translator
(service.errors.render_error). Until the engine is ready, and for every other request, the app
answers as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace

from starlette.requests import Request
from starlette.responses import Response

from .errors import render_error
from .routers import classify, moderations

Endpoint = Callable[[Request, object], Awaitable[Response]]
HOT_ROUTES: dict[str, Endpoint] = {"/classify": classify.classify, "/classify/batch": classify.classify_batch,
                                   "/v1/moderations": moderations.moderations}


class HotRoutes:
    """Pure ASGI, inside the metrics middleware (which labels the request with `scope['route']`)."""

    def __init__(self, app, state, routes: dict[str, Endpoint]):
        self.app, self.state = app, state
        self.routes = {**routes, **{p + "/": ep for p, ep in routes.items()}}  # /classify/: the same route
        self.names = {p + "/": SimpleNamespace(path=p) for p in routes} | {p: SimpleNamespace(path=p) for p in routes}

    async def __call__(self, scope, receive, send) -> None:
        endpoint = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None or self.state.backend is None:
            return await self.app(scope, receive, send)
        scope["route"] = self.names[scope["path"]]
        scope.setdefault("state", {})
        request = Request(scope, receive)
        try:
            response = await endpoint(request, self.state)
        except Exception as e:  # noqa: BLE001 -- every error leaves in the API's shape, as from the routes
            response = render_error(request, e)
        await response(scope, receive, send)
