"""Reading request bodies: multipart or JSON, with byte limits enforced while reading.

Body limit: a request body may hold its images base64-encoded (JSON) or as multipart parts, so
the limit follows from MODERATION_MAX_IMAGE_BYTES (`body_limit`): per image 4/3 of it (base64)
plus 64 KiB of boundaries and keys, plus 64 KiB for the request. With the default 10 MiB,
/classify accepts bodies up to 14,112,089 bytes and /classify/batch (MAX_BATCH_ITEMS = 64) up to
64 times that; larger bodies get 413 payload_too_large, larger images 413 image_too_large.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from .errors import ApiError, validation_error
from .items import lookup  # noqa: F401  (re-exported for the admin routes)
from .multipart import parse_form

MULTIPART, JSON, IMAGE = "multipart/form-data", "application/json", "image/*"
_OVERHEAD = 64 * 1024  # multipart boundaries and headers, JSON keys and domains
FAST_FORM_BYTES = 4 * 1024 * 1024  # multipart bodies up to this are read whole (service.multipart); larger stream


def content_kind(request: Request, raw_image: bool = False) -> str:
    """MULTIPART, JSON or (with `raw_image`) IMAGE for an `image/*` body; else 415."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in (MULTIPART, JSON):
        return ctype
    if raw_image and ctype.startswith("image/"):
        return IMAGE
    accepted = "multipart/form-data, application/json or an image/* body" if raw_image else \
        "multipart/form-data or application/json"
    raise ApiError(415, "unsupported_media_type", f"content type {ctype or 'none'!r} is not accepted; send {accepted}")


def require_json(request: Request) -> None:
    """415, as /classify answers it, for a body that is not application/json (a FastAPI dependency)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != JSON:
        raise ApiError(415, "unsupported_media_type",
                       f"content type {ctype or 'none'!r} is not accepted; send application/json "
                       "(curl: -H 'content-type: application/json')")


def check_content_length(request: Request, limit: int) -> None:
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > limit:
        raise ApiError(413, "payload_too_large", f"request body is {n} bytes; the limit is {limit} bytes")


def body_limit(max_image_bytes: int, items: int) -> int:
    return items * (max_image_bytes * 4 // 3 + 4 + _OVERHEAD) + _OVERHEAD


def _body_timeout(seconds: float) -> ApiError:
    return ApiError(408, "request_timeout", f"the request body did not arrive within {seconds:g} s")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    check_content_length(request, limit)
    chunks, size = [], 0

    async def receive() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large", f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)

    try:
        async with asyncio.timeout(timeout_s):  # a timer on this task, not a task per read (wait_for)
            await receive()
    except TimeoutError:
        raise _body_timeout(timeout_s) from None
    return b"".join(chunks)


def _capped(request: Request, limit: int) -> Request:
    """The same request whose body stream fails with 413 once more than `limit` bytes arrived
    (chunked uploads carry no Content-Length to check up front)."""
    receive, seen = request.receive, 0

    async def capped_receive():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ApiError(413, "payload_too_large", f"request body exceeds the limit of {limit} bytes")
        return message

    return Request(request.scope, capped_receive)


async def read_form(request: Request, limit: int, max_files: int, timeout_s: float) -> FormData:
    """The multipart form; a body of known length up to FAST_FORM_BYTES is read whole and split by
    service.multipart when it is of the common shape, any other by Starlette's streaming parser."""
    check_content_length(request, limit)
    n = request.headers.get("content-length", "")
    if n.isdigit() and int(n) <= FAST_FORM_BYTES:
        body = await read_body(request, limit, timeout_s)
        form = parse_form(request.headers.get("content-type", ""), body, max_files + 1, max_files + 16)
        if form is not None:
            return form
        request = _replayed(request, body)
    try:
        async with asyncio.timeout(timeout_s):
            return await _capped(request, limit).form(max_files=max_files + 1, max_fields=max_files + 16)
    except TimeoutError:
        raise _body_timeout(timeout_s) from None
    except ApiError:
        raise
    except Exception as e:  # starlette raises HTTPException(400) or parser errors on hostile bodies
        detail = getattr(e, "detail", None) or str(e) or type(e).__name__
        if "Too many files" in str(detail):
            raise ApiError(413, "too_many_items", f"too many files; the limit is {max_files}") from None
        raise ApiError(400, "malformed_multipart", f"could not parse the multipart body: {detail}") from None


def _replayed(request: Request, body: bytes) -> Request:
    """The same request, its body (already read) delivered again in one message."""
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def read_upload(file: Any, field: str, max_bytes: int) -> bytes:
    """Bytes of an uploaded file part, refusing more than `max_bytes` without reading it all."""
    if not isinstance(file, UploadFile):
        raise validation_error(f"field {field!r} must be a file upload, not a text field")
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "image_too_large", f"image is larger than the limit of {max_bytes} bytes")
    return data


def decode_base64(text: Any, max_bytes: int) -> bytes:
    if not isinstance(text, str):
        raise validation_error("field 'image' must be a base64 string")
    if text.startswith("data:"):
        head, sep, rest = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(400, "invalid_base64", "a data: URI image must be base64 (data:image/...;base64,...)")
        text = rest
    if len(text) > max_bytes * 4 // 3 + 1024:
        raise ApiError(413, "image_too_large", f"image is larger than the limit of {max_bytes} bytes")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", "field 'image' is not valid base64") from None


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested JSON
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
