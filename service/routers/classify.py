"""POST /classify and /classify/batch: multipart or JSON in, per-label scores out."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..errors import ApiError, validation_error
from ..inputs import (
    MULTIPART,
    body_limit,
    check_domain,
    content_kind,
    decode_base64,
    lookup,
    parse_json,
    read_body,
    read_form,
    read_upload,
)
from ..registry import Snapshot
from ..schemas import (
    ERRORS,
    BatchItemRequest,
    BatchRequest,
    BatchResponse,
    ClassifyRequest,
    ClassifyResponse,
)
from ..scoring import build_result
from ..state import ServiceState, StateDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["classify"])


def _inline_refs(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` substituted in place (request bodies need no components)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _body_doc(json_model, multipart_schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": multipart_schema},
        "application/json": {"schema": _inline_refs(json_model.model_json_schema())},
    }}}


SINGLE_BODY = _body_doc(ClassifyRequest, {
    "type": "object", "required": ["image", "domain"],
    "properties": {"image": {"type": "string", "format": "binary", "description": "the image file"},
                   "domain": {"type": "string", "minLength": 1, "description": "domain of the image",
                              "example": "photo"}}})
BATCH_BODY = _body_doc(BatchRequest, {
    "type": "object", "required": ["images", "domains"],
    "properties": {"images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}},
                   "domains": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1},
                               "description": "one domain per image (or a single domain for all)"}}})
# An item missing a field fails alone (its status 422), so the item schema lists no required keys.
_item = BATCH_BODY["requestBody"]["content"]["application/json"]["schema"]["properties"]["items"]["items"]
_item.pop("required", None)
_item["description"] = "an item without `image` or `domain` fails alone with status 422"


async def _classify_one(state: ServiceState, snapshot: Snapshot, data: bytes, domain: str, t0: float) -> dict:
    entry = lookup(snapshot, domain)
    pixels = await state.decoder.decode(data)
    row = await state.engine.classify(pixels, entry, snapshot)
    result = build_result(entry, row, model=state.model_name, review_margin=state.settings.review_margin,
                          review_out_of_scope=state.settings.review_out_of_scope,
                          latency_ms=(time.perf_counter() - t0) * 1000.0)
    state.metrics.images.labels(entry.domain).inc()
    if result["flagged"]:
        state.metrics.flagged.labels(entry.domain).inc()
    return result


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=SINGLE_BODY,
             summary="Classify one image in its domain")
async def classify(request: Request, state: StateDep) -> JSONResponse:
    """Multipart `image` (file) + `domain` (field), or JSON `{"image": <base64>, "domain": ...}`."""
    t0 = time.perf_counter()
    snapshot = state.registry.snapshot  # this request finishes on the bundles loaded now
    s = state.settings
    limit = body_limit(s.max_image_bytes, 1)
    if content_kind(request) == MULTIPART:
        form = await read_form(request, limit, max_files=1, timeout_s=s.body_timeout_s)
        try:
            images = form.getlist("image")
            if not images:
                raise validation_error("field 'image' (a file) is required")
            if len(images) > 1:
                raise validation_error(f"send exactly one 'image' to /classify ({len(images)} given); "
                                       "use /classify/batch for several")
            domain = check_domain(form.get("domain"))
            data = await read_upload(images[0], "image", s.max_image_bytes)
        finally:
            await form.close()  # spooled upload files
    else:
        raw = parse_json(await read_body(request, limit, s.body_timeout_s))
        try:
            req = ClassifyRequest.model_validate(raw)
        except ValidationError as e:
            raise validation_error(_pydantic_message(e)) from None
        domain = check_domain(req.domain)
        lookup(snapshot, domain)  # 404 before decoding base64
        data = decode_base64(req.image, s.max_image_bytes)
    return JSONResponse(await _classify_one(state, snapshot, data, domain, t0))


def _pydantic_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        msg = "field required" if err.get("type") == "missing" else err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or "invalid request body"


def _item_error(index: int, err: ApiError) -> dict[str, Any]:
    return {"index": index, "status": err.status, "result": None, "error": {"code": err.code, "message": err.message}}


async def _read_batch_form(form, items: list, n_max: int, max_bytes: int) -> None:
    """Multipart batch fields -> (bytes | ApiError, domain) per image, appended to `items`."""
    files, domains = form.getlist("images"), form.getlist("domains")
    if not files:
        raise validation_error("field 'images' (one or more files) is required")
    if len(files) > n_max:
        raise ApiError(413, "too_many_items", f"{len(files)} images; the limit is {n_max} per batch")
    if not domains:
        raise validation_error("field 'domains' is required (one per image, or one for all)")
    if len(domains) == 1:
        domains = domains * len(files)
    if len(domains) != len(files):
        raise validation_error(f"{len(files)} images but {len(domains)} domains; send one domain per image "
                               "or a single domain for all")
    for f, d in zip(files, domains, strict=True):
        try:
            items.append((await read_upload(f, "images", max_bytes), d))
        except ApiError as e:
            items.append((e, d))


@router.post("/classify/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=BATCH_BODY,
             summary="Classify many images, mixed domains, per-item results")
async def classify_batch(request: Request, state: StateDep) -> JSONResponse:
    """Multipart `images` (files) + `domains` (one per image, or one for all), or JSON
    `{"items": [{"image": <base64>, "domain": ...}, ...]}`. A bad item fails alone (its `status`
    and `error`); the others are classified in the same micro-batches."""
    t0 = time.perf_counter()
    snapshot = state.registry.snapshot
    s = state.settings
    n_max = s.max_batch_items
    limit = body_limit(s.max_image_bytes, n_max)
    items: list[tuple[Any, Any]] = []  # (bytes | ApiError, domain | ApiError)
    if content_kind(request) == MULTIPART:
        form = await read_form(request, limit, max_files=n_max, timeout_s=s.body_timeout_s)
        try:
            await _read_batch_form(form, items, n_max, s.max_image_bytes)
        finally:
            await form.close()
    else:
        raw = parse_json(await read_body(request, limit, s.body_timeout_s))
        if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
            raise validation_error('the body must be {"items": [{"image": <base64>, "domain": ...}, ...]}')
        if not raw["items"]:
            raise validation_error("'items' must not be empty")
        if len(raw["items"]) > n_max:
            raise ApiError(413, "too_many_items", f"{len(raw['items'])} items; the limit is {n_max} per batch")
        for i, it in enumerate(raw["items"]):
            try:
                req = BatchItemRequest.model_validate(it)
                items.append((decode_base64(req.image, s.max_image_bytes), req.domain))
            except ValidationError as e:
                items.append((validation_error(f"items.{i}: {_pydantic_message(e)}"), None))
            except ApiError as e:
                items.append((e, None))

    async def decode(i: int, data: Any, domain: Any):
        if isinstance(data, ApiError):
            return data
        try:
            entry = lookup(snapshot, check_domain(domain))
            return entry, await state.decoder.decode(data)
        except ApiError as e:
            return e

    decoded = await asyncio.gather(*(decode(i, d, dom) for i, (d, dom) in enumerate(items)))

    async def infer(i: int, item: Any) -> dict[str, Any]:
        if isinstance(item, ApiError):
            return _item_error(i, item)
        entry, pixels = item
        try:
            row = await state.engine.classify(pixels, entry, snapshot)
        except ApiError as e:
            return _item_error(i, e)
        result = build_result(entry, row, model=state.model_name, review_margin=s.review_margin,
                              review_out_of_scope=s.review_out_of_scope,
                              latency_ms=(time.perf_counter() - t0) * 1000.0)
        state.metrics.images.labels(entry.domain).inc()
        if result["flagged"]:
            state.metrics.flagged.labels(entry.domain).inc()
        return {"index": i, "status": 200, "result": result, "error": None}

    # every decoded item is queued in this one step, so they land in the same micro-batch
    results = await asyncio.gather(*(infer(i, it) for i, it in enumerate(decoded)))
    for r in results:
        if r["error"] is not None:
            state.metrics.errors.labels("/classify/batch#item", str(r["status"]), r["error"]["code"]).inc()
    return JSONResponse({"results": results, "latency_ms": round((time.perf_counter() - t0) * 1000.0, 3)})
