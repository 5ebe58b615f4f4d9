"""The reviewer's routes (DESIGN §13): the page, the queue, claims, images, verdicts (and their undo), stats.

Every route but the page's HTML shell and its static script needs `Authorization: Bearer
$MODERATION_REVIEWER_TOKEN` (403 review_disabled while it is unset, 401 without or with a wrong
one). The store is synchronous (SQLAlchemy): the data routes are plain `def`s, run in the thread
pool, so a slow database never blocks the event loop that answers /classify.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
from typing import Annotated, Literal

import sqlalchemy.exc
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from review import ReviewError, ReviewStore

from ..errors import ApiError
from ..review_page import FILES as PAGE_FILES
from ..review_schemas import REVIEW_ERRORS, ReviewItem, ReviewItems, ReviewStats, VerdictRequest
from ..schemas import error_doc
from ..state import ServiceState

log = logging.getLogger(__name__)
router = APIRouter(prefix="/review", tags=["review"])
bearer = HTTPBearer(auto_error=False, description="MODERATION_REVIEWER_TOKEN")

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
IMAGE_CSP = "default-src 'none'; sandbox; frame-ancestors 'none'"  # an image opened alone runs nothing
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store"}
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
_STATUS = {"not_found": 404, "already_decided": 409, "not_undoable": 409, "image_purged": 410}


def require_reviewer(request: Request,
                     creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ReviewStore:
    state: ServiceState = request.app.state.service
    token = state.settings.reviewer_token
    if token is None or not token.get_secret_value():
        raise ApiError(403, "review_disabled", "review routes are disabled: set MODERATION_REVIEWER_TOKEN")
    given = creds.credentials if creds is not None else ""
    # digests of equal length: the comparison time reveals neither the token nor its length
    if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(token.get_secret_value().encode()).digest()):
        raise ApiError(401, "unauthorized", "a valid reviewer token is required (Authorization: Bearer <token>)",
                       {"WWW-Authenticate": "Bearer"})
    if state.review_store is None:
        raise ApiError(503, "review_unavailable", "the review queue is off (MODERATION_REVIEW_DB=off)")
    return state.review_store


StoreDep = Annotated[ReviewStore, Depends(require_reviewer)]
ItemId = Annotated[str, PathParam(max_length=64, description="a review_id")]


def _call(store: ReviewStore, fn, *args, **kw):
    """A store call, its refusals as API errors; a database that does not answer is a 503."""
    try:
        store.ensure_schema()
        return fn(*args, **kw)
    except ReviewError as e:
        raise ApiError(_STATUS[e.kind], e.kind, str(e)) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        log.warning("review database error: %s", str(e).strip().splitlines()[0])
        raise ApiError(503, "review_unavailable", "the review database does not answer; retry shortly",
                       {"Retry-After": "5"}) from None


# ------------------------------------------------------------------ the page
@router.get("", response_class=HTMLResponse, summary="The reviewer's page (HTML; no token needed to load it)")
async def page(request: Request) -> HTMLResponse:
    state: ServiceState = request.app.state.service
    snapshot = state.registry.snapshot if state.registry is not None else None
    domains = sorted(snapshot.domains) if snapshot is not None else []
    options = "".join(f'<option value="{html.escape(d)}">{html.escape(d)}</option>' for d in domains)
    body = _template("review.html").replace("{{domain_options}}", options).replace(
        "{{undo_s}}", f"{state.settings.review_undo_s:g}")
    return HTMLResponse(body, headers={"Content-Security-Policy": PAGE_CSP, **SECURITY_HEADERS})


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in STATIC:
        raise ApiError(404, "not_found", f"no static file {name!r}")
    return Response(_template(name), media_type=STATIC[name], headers=SECURITY_HEADERS)


def _template(name: str) -> str:
    return PAGE_FILES[name]


# ------------------------------------------------------------------ the queue
@router.get("/items", response_model=ReviewItems, responses=REVIEW_ERRORS, summary="List review items")
def list_items(store: StoreDep, status: Literal["pending", "decided"] = "pending", domain: str | None = None,
               reason: Literal["needs_review", "audit", "out_of_scope"] | None = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict:
    """Pending items oldest first, or decided items most recent verdict first."""
    return {"items": _call(store, store.list, status, domain, reason, limit)}


@router.post("/claim", response_model=ReviewItems, responses=REVIEW_ERRORS,
             summary="Claim pending items for a reviewer")
def claim(store: StoreDep, domain: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 1,
          reviewer: Annotated[str, Query(min_length=1, max_length=128)] = "reviewer") -> dict:
    """Up to `limit` pending items nobody holds, oldest first, held for `reviewer` for MODERATION_REVIEW_CLAIM_S
    seconds. Two claims never return the same item."""
    return {"items": _call(store, store.claim, reviewer, domain, limit)}


ITEM_ERRORS = {**REVIEW_ERRORS, 404: error_doc("Unknown review item", "not_found", "no review item 'x'")}


@router.get("/items/{item_id}", response_model=ReviewItem, responses=ITEM_ERRORS, summary="One review item")
def get_item(item_id: ItemId, store: StoreDep) -> dict:
    return _call(store, store.get, item_id)


@router.get("/items/{item_id}/image", responses={**ITEM_ERRORS, 200: {"content": {"image/*": {}}},
                                                 410: error_doc("Purged by retention", "image_purged", "...")},
            response_class=Response, summary="The item's image bytes")
def image(item_id: ItemId, store: StoreDep) -> Response:
    """The bytes as uploaded, with their exact content type, `nosniff` and a Content-Security-Policy that lets
    nothing run."""
    data, content_type = _call(store, store.image, item_id)
    return Response(data, media_type=content_type,
                    headers={**SECURITY_HEADERS, "Content-Security-Policy": IMAGE_CSP,
                             "Cache-Control": "private, no-store", "Content-Disposition": "inline"})


VERDICT_ERRORS = {**ITEM_ERRORS,
                  409: error_doc("The item has a verdict already", "already_decided", "..."),
                  422: error_doc("A label the domain lacks, or invalid fields", "unknown_label",
                                 "photo has no label 'star'; labels: [...]")}


@router.post("/items/{item_id}/verdict", response_model=ReviewItem, responses=VERDICT_ERRORS,
             summary="Record a reviewer's verdict")
def verdict(item_id: ItemId, body: VerdictRequest, request: Request, store: StoreDep) -> dict:
    """`label` must be one of the domain's labels (as served now), or null for none of them."""
    item = _call(store, store.get, item_id)
    if item["verdict"] is not None:
        raise ApiError(409, "already_decided", f"review item {item_id!r} already has a verdict "
                                               f"(by {item['verdict']['reviewer']!r})")
    if body.label is not None:
        known = _labels(request.app.state.service, item)
        if body.label not in known:
            raise ApiError(422, "unknown_label", f"{item['domain']} has no label {body.label!r}; labels: {known} "
                                                 "(or null for none of them)")
    out = _call(store, store.decide, item_id, body.label, body.unsafe, body.reviewer)
    log.info("verdict on %s (%s): label=%s unsafe=%s by %s", item_id, item["domain"], body.label, body.unsafe,
             body.reviewer)
    return out


@router.delete("/items/{item_id}/verdict", response_model=ReviewItem,
               responses={**VERDICT_ERRORS, 409: error_doc("No verdict, another reviewer's, or older than "
                                                           "MODERATION_REVIEW_UNDO_S", "not_undoable", "...")},
               summary="Undo a verdict (its reviewer, within the undo window)")
def undo(item_id: ItemId, store: StoreDep, reviewer: Annotated[str, Query(min_length=1, max_length=128)]) -> dict:
    """The item is pending again and claimed by `reviewer`."""
    return _call(store, store.undo, item_id, reviewer)


@router.get("/stats", response_model=ReviewStats, responses=REVIEW_ERRORS,
            summary="Per domain: pending, decided, agreement with reviewers, audit estimates (95% Wilson)")
def stats(store: StoreDep) -> dict:
    return _call(store, store.stats)


def _labels(state: ServiceState, item: dict) -> list[str]:
    """The labels of the item's domain as served now; the answer's own when the domain is no longer served."""
    entry = state.registry.snapshot.domains.get(item["domain"]) if state.registry is not None else None
    if entry is not None:
        return entry.label_names
    return [lab["label"] for lab in item["answer"].get("labels", [])]
