"""POST /admin/reload: rescan the store and hot-swap changed bundles (bearer token)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import ApiError
from ..schemas import ADMIN_ERRORS, ReloadResponse
from ..state import ServiceState, StateDep

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"])
bearer = HTTPBearer(auto_error=False, description="MODERATION_ADMIN_TOKEN")


def require_admin(state: StateDep,
                  creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ServiceState:
    token = state.settings.admin_token
    if token is None or not token.get_secret_value():
        raise ApiError(403, "admin_disabled", "admin endpoints are disabled: set MODERATION_ADMIN_TOKEN")
    given = creds.credentials if creds is not None else ""
    # digests of equal length: the comparison time reveals neither the token nor its length
    if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(token.get_secret_value().encode()).digest()):
        raise ApiError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)",
                       {"WWW-Authenticate": "Bearer"})
    return state


AdminDep = Annotated[ServiceState, Depends(require_admin)]


async def reload_store(state: ServiceState) -> dict:
    """Serialised reloads; loading and text features run off the event loop, then one atomic swap."""
    async with state.reload_lock:
        report = await asyncio.to_thread(state.registry.reload)
    snapshot = state.registry.snapshot
    state.metrics.set_bundles(snapshot)
    state.metrics.reloads.labels("ok" if report.ok else "refused").inc()
    return {"ok": report.ok, "generation": report.generation, "loaded": report.loaded,
            "unchanged": report.unchanged, "refused": report.refused,
            "domains": {d: e.version for d, e in sorted(snapshot.domains.items())}}


@router.post("/reload", response_model=ReloadResponse, responses=ADMIN_ERRORS, response_model_exclude_none=True,
             summary="Rescan the store and hot-swap changed bundles")
async def reload(state: AdminDep) -> dict:
    """Refused bundles are listed under `refused`; their previous version keeps serving."""
    return await reload_store(state)
