"""POST /v1/moderations: OpenAI's moderation endpoint, for pipelines that already use the official SDK.

`model` is a domain, `auto` or absent (auto: the domain router picks each image's domain). `input`
holds image parts as data URIs; remote URLs are refused (the server fetches nothing: no SSRF), and
so is text (this service moderates images). Each image part gets one result, computed by the same
path as /classify (`service.pipeline`), so `flagged` is /classify's. Categories are the domain's
unsafe labels plus the OpenAI category a label maps to (`openai_category` in the manifest).

Every error on this route has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
with the same status as elsewhere, so the SDK raises its typed exceptions (BadRequestError,
NotFoundError, ...).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import ApiError, ParamError
from ..inputs import JSON, body_limit, content_kind, decode_base64, parse_json, read_body
from ..items import AUTO, Item, no_router
from ..openai_schemas import MODERATION_BODY, MODERATION_ERRORS, ModerationResponse
from ..responses import json_response
from ..state import StateDep

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])  # errors in OpenAI's shape: service.errors.render_error


def _model_entry(snapshot: Any, model: Any) -> str | None:
    """The domain `model` names (None: route each image); 404 model_not_found for an unknown one."""
    if model is None or model == AUTO:
        return None
    if not isinstance(model, str):
        raise ParamError(400, "invalid_model", "model must be a string: a domain or 'auto'", "model")
    if model not in snapshot.domains:
        shown = model if len(model) <= 64 else model[:64] + "..."
        raise ParamError(404, "model_not_found", f"unknown model {shown!r}; models: {[*snapshot.known(), AUTO]}",
                         "model")
    return model


def _image_data(part: Any, i: int, max_bytes: int) -> bytes:
    """Bytes of one input part; 400 for text, remote URLs and anything but a base64 data URI."""
    where = f"input[{i}]"
    if isinstance(part, str) or (isinstance(part, dict) and part.get("type") == "text"):
        raise ParamError(400, "text_not_supported", f"{where} is text: this service moderates images only; send "
                                                    '{"type": "image_url", "image_url": {"url": "data:image/...'
                                                    ';base64,..."}}', where)
    url = part.get("image_url", {}).get("url") if isinstance(part, dict) and part.get("type") == "image_url" \
        and isinstance(part.get("image_url"), dict) else None
    if not isinstance(url, str):
        raise ParamError(400, "invalid_input", f'{where} must be {{"type": "image_url", "image_url": {{"url": '
                                               '"data:image/...;base64,..."}}', where)
    if url[:8].lower().startswith(("http://", "https://")) or "://" in url[:16]:
        raise ParamError(400, "remote_url_not_allowed", f"{where}: remote URLs are not fetched (no server-side "
                                                        "fetching: SSRF); send the image as a data URI "
                                                        "(data:image/png;base64,...)", where)
    if not url.startswith("data:"):
        raise ParamError(400, "invalid_image_url", f"{where}: the url must be a data URI "
                                                   "(data:image/png;base64,...)", where)
    try:
        return decode_base64(url, max_bytes)
    except ApiError as e:
        raise ParamError(e.status, e.code, f"{where}: {e.message}", where, e.headers) from None


@router.post("/moderations/", include_in_schema=False)  # the trailing slash: the same route, no redirect
@router.post("/moderations", response_model=ModerationResponse, responses=MODERATION_ERRORS,
             openapi_extra=MODERATION_BODY, summary="OpenAI-compatible moderation of images")
async def moderations(request: Request, state: StateDep) -> Response:
    """`{"model": <domain> | "auto", "input": [{"type": "image_url", "image_url": {"url": "data:..."}}]}`;
    one result per image part, in order. Errors use OpenAI's error shape."""
    t0 = time.perf_counter()
    snapshot = state.backend.view()
    s = state.settings
    if content_kind(request) != JSON:
        raise ParamError(415, "unsupported_media_type", "send application/json", None)
    raw = parse_json(await read_body(request, body_limit(s.max_image_bytes, s.max_batch_items), s.body_timeout_s))
    if not isinstance(raw, dict) or "input" not in raw:
        raise ParamError(400, "invalid_request", 'the body must be {"model": ..., "input": [...]}', "input")
    domain = _model_entry(snapshot, raw.get("model"))
    if domain is None and not snapshot.routable:
        raise ParamError(422, "domain_required", no_router(snapshot, "model").message, "model")
    parts = raw["input"] if isinstance(raw["input"], list) else [raw["input"]]
    if not parts:
        raise ParamError(400, "invalid_input", "input must not be empty", "input")
    if len(parts) > s.max_batch_items:
        raise ParamError(413, "too_many_items", f"{len(parts)} inputs; the limit is {s.max_batch_items}", "input")
    items = [Item(_image_data(p, i, s.max_image_bytes), domain) for i, p in enumerate(parts)]
    answers = await state.backend.classify(snapshot, items, t0, render="moderation")
    for i, a in enumerate(answers):
        if isinstance(a, ApiError):
            raise ParamError(a.status, a.code, f"input[{i}]: {a.message}", f"input[{i}]", a.headers) from None
    models = list(dict.fromkeys(a["model"] for a in answers))
    return json_response({"id": f"modr-{uuid.uuid4().hex}", "model": ",".join(models),
                         "results": [a["result"] for a in answers]})
