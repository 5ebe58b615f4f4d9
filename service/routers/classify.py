"""POST /classify and /classify/batch: multipart or JSON in, per-label scores out."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from ..errors import ApiError, validation_error
from ..inputs import (
    IMAGE,
    MULTIPART,
    body_limit,
    content_kind,
    decode_base64,
    lookup,
    parse_json,
    read_body,
    read_form,
    read_upload,
)
from ..items import Item, requested_domain
from ..responses import json_response
from ..schemas import (
    BATCH_BODY,
    CLASSIFY_BODY,
    ERRORS,
    BatchItemRequest,
    BatchResponse,
    ClassifyRequest,
    ClassifyResponse,
)
from ..state import StateDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["classify"])


def _query_domain(request: Request, body_domain: Any) -> Any:
    """The domain from `?domain=` or the body (either may be given; both only if they agree, else 422)."""
    query = request.query_params.getlist("domain")
    if len(query) > 1:
        raise validation_error("'domain' is given more than once in the query string; send one")
    if not query:
        return body_domain
    if body_domain is not None and body_domain != query[0]:
        raise validation_error(f"two domains: {query[0]!r} in the query string and {body_domain!r} in the body; "
                               "send one")
    return query[0]


def _no_query_domain(request: Request) -> None:
    if "domain" in request.query_params:
        raise validation_error("/classify/batch takes its domains in the body ('domains', one per image or one "
                               "for all; or each item's 'domain'), not in the query string")


@router.post("/classify/", include_in_schema=False)  # the trailing slash: the same route, no redirect
@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=CLASSIFY_BODY,
             summary="Classify one image in its domain (or the domain the router picks)")
async def classify(request: Request, state: StateDep) -> Response:
    """Multipart `image` (file) + `domain` (field), JSON `{"image": <base64>, "domain": ...}`, or the image
    itself as an `image/*` body with `?domain=`; the domain may always come as `?domain=` (422 if it
    contradicts the body's). Without a domain (or with `auto`) the
    store's domain router picks it, and `routing` says which, with what confidence."""
    t0 = time.perf_counter()
    snapshot = state.backend.view()  # this request finishes on the bundles loaded now
    s = state.settings
    limit = body_limit(s.max_image_bytes, 1)
    kind = content_kind(request, raw_image=True)
    if kind == IMAGE:  # the bytes are the image; the domain comes as ?domain=
        domain = requested_domain(_query_domain(request, None))
        data = await read_body(request, s.max_image_bytes, s.body_timeout_s)
        ctype = request.headers["content-type"].split(";")[0].strip().lower()
        (result,) = await state.backend.classify(snapshot, [Item(data, domain, content_type=ctype)], t0)
        return _answer(result)
    if kind == MULTIPART:
        form = await read_form(request, limit, max_files=1, timeout_s=s.body_timeout_s)
        try:
            images = form.getlist("image")
            if not images:
                raise validation_error("field 'image' (a file) is required")
            if len(images) > 1:
                raise validation_error(f"send exactly one 'image' to /classify ({len(images)} given); "
                                       "use /classify/batch for several")
            domain = requested_domain(_query_domain(request, form.get("domain")))
            data = await read_upload(images[0], "image", s.max_image_bytes)
        finally:
            await form.close()  # spooled upload files
    else:
        raw = parse_json(await read_body(request, limit, s.body_timeout_s))
        try:
            req = ClassifyRequest.model_validate(raw)
        except ValidationError as e:
            raise validation_error(_pydantic_message(e)) from None
        domain = requested_domain(_query_domain(request, req.domain))
        if domain is not None:
            lookup(snapshot, domain)  # 404 before decoding base64
        data = decode_base64(req.image, s.max_image_bytes)
    (result,) = await state.backend.classify(snapshot, [Item(data, domain)], t0)
    return _answer(result)


def _answer(result: Any) -> Response:
    if isinstance(result, ApiError):
        raise result
    return json_response(result)


def _pydantic_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        msg = "field required" if err.get("type") == "missing" else err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or "invalid request body"


def _item_error(index: int, err: ApiError) -> dict[str, Any]:
    return {"index": index, "status": err.status, "result": None, "error": {"code": err.code, "message": err.message}}


async def _read_batch_form(form, items: list[Item], n_max: int, max_bytes: int, routable: bool) -> None:
    """Multipart batch fields -> one Item per image, appended to `items`; no `domains`: all routed."""
    files, domains = form.getlist("images"), form.getlist("domains")
    if not files:
        raise validation_error("field 'images' (one or more files) is required")
    if len(files) > n_max:
        raise ApiError(413, "too_many_items", f"{len(files)} images; the limit is {n_max} per batch")
    if not domains and not routable:
        raise validation_error("field 'domains' is required (one per image, or one for all): no domain router "
                               "is loaded")
    domains = domains or [None]  # none given: every image routed
    if len(domains) == 1:
        domains = domains * len(files)
    if len(domains) != len(files):
        raise validation_error(f"{len(files)} images but {len(domains)} domains; send one domain per image "
                               "or a single domain for all")
    for f, d in zip(files, domains, strict=True):
        try:
            items.append(Item(await read_upload(f, "images", max_bytes), requested_domain(d)))
        except ApiError as e:
            items.append(Item(error=e))


@router.post("/classify/batch/", include_in_schema=False)
@router.post("/classify/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=BATCH_BODY,
             summary="Classify many images, mixed (or routed) domains, per-item results")
async def classify_batch(request: Request, state: StateDep) -> Response:
    """Multipart `images` (files) + `domains` (one per image, or one for all; none: all routed), or JSON
    `{"items": [{"image": <base64>, "domain": ...}, ...]}` (an item without a domain is routed). A bad
    item fails alone (its `status` and `error`); the others are classified in the same micro-batches."""
    t0 = time.perf_counter()
    _no_query_domain(request)
    snapshot = state.backend.view()
    s = state.settings
    n_max = s.max_batch_items
    limit = body_limit(s.max_image_bytes, n_max)
    items: list[Item] = []
    if content_kind(request) == MULTIPART:
        form = await read_form(request, limit, max_files=n_max, timeout_s=s.body_timeout_s)
        try:
            await _read_batch_form(form, items, n_max, s.max_image_bytes, snapshot.routable)
        finally:
            await form.close()
    else:
        _read_batch_json(parse_json(await read_body(request, limit, s.body_timeout_s)), items, n_max,
                         s.max_image_bytes)
    answers = await state.backend.classify(snapshot, items, t0)
    results = [_item_error(i, a) if isinstance(a, ApiError) else {"index": i, "status": 200, "result": a,
                                                                  "error": None}
               for i, a in enumerate(answers)]
    for r in results:
        if r["error"] is not None:
            state.metrics.errors.labels("/classify/batch#item", str(r["status"]), r["error"]["code"]).inc()
    return json_response({"results": results, "latency_ms": round((time.perf_counter() - t0) * 1000.0, 3)})


def _read_batch_json(raw: Any, items: list[Item], n_max: int, max_bytes: int) -> None:
    """JSON batch body -> one Item per entry of `items`, appended to `items`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
        raise validation_error('the body must be {"items": [{"image": <base64>, "domain": ...}, ...]}')
    if not raw["items"]:
        raise validation_error("'items' must not be empty")
    if len(raw["items"]) > n_max:
        raise ApiError(413, "too_many_items", f"{len(raw['items'])} items; the limit is {n_max} per batch")
    for i, it in enumerate(raw["items"]):
        try:
            req = BatchItemRequest.model_validate(it)
            if req.image is None:
                raise validation_error(f"items.{i}: image: field required")
            items.append(Item(decode_base64(req.image, max_bytes), requested_domain(req.domain)))
        except ValidationError as e:
            items.append(Item(error=validation_error(f"items.{i}: {_pydantic_message(e)}")))
        except ApiError as e:
            items.append(Item(error=e))
