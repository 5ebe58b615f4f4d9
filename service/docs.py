"""Offline API docs: /docs (Swagger UI) with its assets served by this process.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank on the offline hosts
this service targets. The assets come from an installed package (`fastapi-offline`, in the
`[serve]` extra) and are served under /docs-assets/; the page references nothing else. /redoc is
not served: ReDoc's bundle fetches its logo from a CDN whatever it is given.
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)

ASSETS = "/docs-assets"
_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")


def asset_dir() -> Path | None:
    """The installed package's folder of Swagger UI / ReDoc assets, or None when it is not installed."""
    try:
        folder = Path(str(importlib.resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if all((folder / f).is_file() for f in _FILES) else None


def _drop_routes(app: FastAPI, paths: set[str]) -> None:
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in paths]


def install_docs(app: FastAPI) -> None:
    """Replace FastAPI's CDN-backed /docs with a page whose assets this app serves; drop /redoc."""
    cdn_pages = {p for p in (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p}
    _drop_routes(app, cdn_pages)
    app.docs_url = app.redoc_url = None  # FastAPI must not add them back
    folder = asset_dir()
    if folder is None:  # a page that needs the internet is worse than none: say how to get it
        log.warning("API docs pages disabled: the fastapi-offline package is not installed "
                    '(pip install -e ".[serve]"); /openapi.json is still served')
        return
    app.mount(ASSETS, StaticFiles(directory=folder), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2 = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
                                   oauth2_redirect_url=root + oauth2, swagger_ui_parameters=app.swagger_ui_parameters)

    @app.get(oauth2, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
