"""Admin (bearer token): POST /admin/reload rescans the store and hot-swaps changed bundles;
POST /admin/domains/{domain}/labels and DELETE /admin/domains/{domain}/labels/{name} publish a new
bundle version with one label more or less (promptclip.labels: no retraining), then reload."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from promptclip import Label
from promptclip.labels import LabelEditError, publish_label_edit

from ..errors import ApiError
from ..inputs import lookup, require_json
from ..schemas import ADMIN_ERRORS, LabelAddRequest, LabelChangeResponse, ReloadResponse, error_doc
from ..state import ServiceState, StateDep
from .domains import label_infos

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
JsonBody = Annotated[None, Depends(require_json)]  # 415 for a form-encoded body (curl -d without a content type)


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


_EDIT_STATUS = {"unknown_label": 404, "label_exists": 409, "too_few_labels": 409, "too_many_labels": 409,
                "invalid_label": 422}
LABEL_ERRORS = {
    **ADMIN_ERRORS,
    400: error_doc("The body is not valid JSON", "bad_request", "There was an error parsing the body"),
    404: error_doc("Unknown domain or label", "unknown_label", "photo has no label 'star'; labels: [...]"),
    409: error_doc("The label exists already, the domain would keep fewer than 2 labels or more than 256, or the "
                   "store is not writable", "label_exists", "photo already has a label 'star'; remove it first"),
    415: error_doc("The body is not application/json", "unsupported_media_type",
                   "content type 'application/x-www-form-urlencoded' is not accepted; send application/json"),
    422: error_doc("Invalid label fields", "validation_error", "threshold: Input should be less than or equal to 1"),
}
DomainPath = Annotated[str, PathParam(description="a served domain", examples=["photo"])]


async def edit_labels(state: ServiceState, domain: str, *, add: Label | None = None,
                      remove: str | None = None) -> dict:
    """Publish `domain`'s next version with the edit (serialised with reloads), then hot-reload it."""
    lookup(state.registry.snapshot, domain)  # 404 for a domain that is not served
    async with state.reload_lock:
        try:
            bundle, previous = await asyncio.to_thread(publish_label_edit, state.registry.store, domain, add=add,
                                                       remove=remove, base=state.clip.info)
        except LabelEditError as e:
            raise ApiError(_EDIT_STATUS[e.kind], e.kind, str(e)) from None
        except OSError as e:
            raise ApiError(409, "store_not_writable", f"cannot publish into the bundle store ({e.strerror or e}); "
                                                      "label edits need a writable MODERATION_STORE_DIR") from None
    log.info("label %s %r on %s: published %s (was %s)", "added" if add else "removed", add.name if add else remove,
             domain, bundle.version, previous)
    reload = await reload_store(state)
    served = state.registry.snapshot.domains[domain]  # the new version, unless the reload refused it
    return {"domain": domain, "version": bundle.version, "previous": previous, "reload": reload,
            "labels": label_infos(served)}


@router.post("/domains/{domain}/labels", response_model=LabelChangeResponse, status_code=201,
             responses=LABEL_ERRORS, summary="Add a label to a domain without retraining")
async def add_label(domain: DomainPath, body: LabelAddRequest, state: AdminDep, _json: JsonBody) -> dict:
    """Publishes the domain's next version (same prompt tensors, one more label, uncalibrated: its probability
    is the closed-set softmax) and hot-reloads it."""
    label = Label(body.name, body.prompt, body.unsafe, body.threshold, openai_category=body.openai_category)
    return await edit_labels(state, domain, add=label)


@router.delete("/domains/{domain}/labels/{name}", response_model=LabelChangeResponse, responses=LABEL_ERRORS,
               summary="Remove a label from a domain without retraining")
async def remove_label(domain: DomainPath, name: Annotated[str, PathParam(examples=["star"])], state: AdminDep) -> dict:
    """Publishes the domain's next version without the label (its scope-bank rows dropped) and hot-reloads it."""
    return await edit_labels(state, domain, remove=name)
