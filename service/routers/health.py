"""GET /healthz (process alive) and GET /readyz (model, bundles and warm-up done; 503 while draining)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..schemas import HealthResponse, ReadyResponse, error_doc

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyResponse, summary="Readiness",
            responses={503: error_doc("Starting, draining, or no bundle loaded", "not_ready", "draining")})
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state.service
    n = len(state.backend.view().domains) if state.backend is not None else 0
    reason = ("draining" if state.draining else "starting" if not (state.ready and state.siblings_ready())
              else "no bundle loaded from the store" if n == 0 else None)
    if reason:
        request.state.error_code = "not_ready"
        return JSONResponse({"error": {"code": "not_ready", "message": reason}}, status_code=503)
    return JSONResponse({"status": "ready", "domains": n})
