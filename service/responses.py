"""JSON responses of the hot routes, serialised by orjson: no per-field validation on the request path
(the OpenAPI schema still documents every field through the routes' response models)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response


def json_response(content: Any, status_code: int = 200) -> Response:
    """`content` as application/json (NaN and infinities become null, as JSON has no other spelling)."""
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")
