"""Request and response models, one per role, with OpenAPI examples (/v1/moderations: openai_schemas.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


# ---------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable error code", examples=["unknown_domain"])
    message: str = Field(description="what was wrong and what is accepted")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": {"code": "unknown_domain", "message": "unknown domain 'x'; known domains: ['comic', 'photo']"}}]})
    error: ErrorBody


def error_doc(description: str, example_code: str, example_message: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description,
            "content": {"application/json": {"example": {"error": {"code": example_code,
                                                                   "message": example_message}}}}}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
ERRORS = {
    400: error_doc("Undecodable, truncated or degenerate image; malformed body", "undecodable_image",
                   "JPEG data is truncated or corrupt"),
    404: error_doc("Unknown domain (the message lists the known ones)", "unknown_domain",
                   "unknown domain 'x'; known domains: ['comic', 'photo', 'sketch']"),
    408: error_doc("The request body did not arrive within MODERATION_BODY_TIMEOUT_S", "request_timeout",
                   "the request body did not arrive within 30 s"),
    413: error_doc("Too many bytes, too many pixels, or too many batch items", "image_too_large",
                   "image is 20000000 bytes; the limit is 10485760 bytes"),
    415: error_doc("Unsupported image format or request content type", "unsupported_format",
                   "TIFF images are not supported; send JPEG, PNG, WebP, GIF (first frame), BMP"),
    422: error_doc("Missing or invalid fields", "validation_error", "field 'domain' is required"),
    500: error_doc("The model failed on the batch this request was in", "inference_failed",
                   "the model failed on this batch (RuntimeError)"),
    503: {**error_doc("Queue full (retry after Retry-After) or shutting down", "queue_full",
                      "the server is at capacity; retry after the Retry-After delay"), "headers": RETRY_AFTER},
    504: error_doc("No result within the request timeout", "timeout", "no result within 30 s"),
}
ADMIN_ERRORS = {
    401: error_doc("Missing or wrong bearer token", "unauthorized", "a valid bearer token is required"),
    403: error_doc("Admin endpoints are disabled (no MODERATION_ADMIN_TOKEN)", "admin_disabled",
                   "admin endpoints are disabled: set MODERATION_ADMIN_TOKEN"),
}


# ---------------------------------------------------------------- classify
_DOMAIN_DOC = ("domain whose bundle classifies the image; absent or `auto`: the store's domain router picks it "
               "(the answer's `routing` says which, with what confidence)")


class ClassifyRequest(BaseModel):
    """JSON form of /classify. Multipart (`image` file + optional `domain` field) is accepted too."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"image": PNG_1PX, "domain": "photo"},
                                                              {"image": PNG_1PX}]})
    image: str = Field(description="base64 image bytes (a data: URI prefix is accepted)")
    domain: str | None = Field(None, description=_DOMAIN_DOC, min_length=1)


class BatchItemRequest(BaseModel):
    """One batch item. Nothing is required by the schema: an item without `image` fails alone (status 422)."""

    image: str | None = Field(None, description="base64 image bytes (required: an item without it fails alone "
                                                "with status 422)")
    domain: str | None = Field(None, description=_DOMAIN_DOC, min_length=1)


class BatchRequest(BaseModel):
    """JSON form of /classify/batch. Multipart (`images` files + `domains` fields) is accepted too."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"items": [{"image": PNG_1PX, "domain": "photo"}, {"image": PNG_1PX, "domain": "sketch"}]}]})
    items: list[BatchItemRequest] = Field(min_length=1)


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="cosine similarity between the image and the label prompt")
    probability: float = Field(description="calibrated one-vs-rest probability that the image shows this label "
                                           "(Platt scaling on held-out images; read 0.8 as about 80%). Labels "
                                           "with calibrated=false (added without retraining, or legacy bundles) "
                                           "carry the closed-set softmax here")
    softmax: float = Field(description="closed-set softmax of logit_scale * cosine over the domain's labels")
    threshold: float = Field(description="probability at or above which an unsafe label is flagged, fitted to the "
                                         "bundle's false-flag target")
    unsafe: bool
    flagged: bool = Field(description="in scope, unsafe and probability >= threshold")
    calibrated: bool = Field(description="probability is calibrated on held-out images")


class CandidateDomain(BaseModel):
    domain: str
    probability: float


class RoutingInfo(BaseModel):
    domain: str = Field(description="the domain the router chose")
    confidence: float = Field(description="router probability of that domain among the served domains")
    low_confidence: bool = Field(description="confidence below the router's min_confidence: the image also goes "
                                             "to review unless flagged")
    candidates: list[CandidateDomain] = Field(description="the most probable domains, best first")
    router: str = Field(description="router version")


class BundleRef(BaseModel):
    version: str
    group: str = Field(description="id of the prompt group the domain's bundle belongs to")


_EXAMPLE_RESULT = {
    "domain": "photo", "bundle": {"version": "v0001", "group": "g0"}, "model": "tiny-clip",
    "labels": [
        {"label": "weapon", "score": 0.31, "probability": 0.81, "softmax": 0.9, "threshold": 0.5, "unsafe": True,
         "flagged": True, "calibrated": True},
        {"label": "flower", "score": 0.12, "probability": 0.02, "softmax": 0.1, "threshold": 0.5, "unsafe": False,
         "flagged": False, "calibrated": True}],
    "top_label": "weapon", "out_of_scope": False, "scope_score": -0.8, "flagged": True, "needs_review": False,
    "rule": "calibrated", "latency_ms": 4.2,
}


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_RESULT]})
    domain: str
    bundle: BundleRef
    model: str = Field(description="CLIP architecture serving the request")
    labels: list[LabelScore] = Field(description="every label of the domain, highest score first")
    top_label: str | None = Field(description="the label with the highest score; null when out of scope")
    out_of_scope: bool = Field(description="the image matches none of the domain's labels: it is never flagged")
    scope_score: float | None = Field(description="in-scope score (minus the squared whitened distance to the "
                                                  "nearest label's calibration images, per dimension); out of "
                                                  "scope below the bundle's cut. null for legacy bundles")
    flagged: bool = Field(description="in scope and an unsafe label at or above its threshold")
    needs_review: bool = Field(description="not flagged, in scope and the largest unsafe probability at or above "
                                           "the bundle's review threshold; or out of scope when "
                                           "REVIEW_OUT_OF_SCOPE is set. Legacy bundles: an unsafe label within "
                                           "REVIEW_MARGIN below its threshold")
    rule: str = Field(description="calibrated, or legacy for bundles written before calibrated decisions")
    routing: RoutingInfo | None = Field(None, description="set when the domain was routed (none or `auto` sent)")
    review_id: str | None = Field(None, description="set when the answer was queued for human review "
                                                    "(needs_review, out of scope, or a random audit): "
                                                    "the id of its item under /review/items")
    latency_ms: float


class BatchItemResult(BaseModel):
    index: int = Field(description="position of the item in the request")
    status: int = Field(description="HTTP status this item would have had alone")
    result: ClassifyResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "results": [{"index": 0, "status": 200, "result": _EXAMPLE_RESULT, "error": None},
                    {"index": 1, "status": 404, "result": None,
                     "error": {"code": "unknown_domain", "message": "unknown domain 'x'; known domains: ['photo']"}}],
        "latency_ms": 7.5}]})
    results: list[BatchItemResult]
    latency_ms: float


# ---------------------------------------------------------------- domains, admin, health
class LabelInfoOut(BaseModel):
    name: str
    prompt: str
    unsafe: bool
    threshold: float
    calibrated: bool = Field(description="the label's probability is calibrated on held-out images; false for "
                                         "labels added without retraining (their probability is the closed-set "
                                         "softmax)")
    openai_category: str | None = Field(None, description="OpenAI moderation category this label also reports "
                                                          "in /v1/moderations")


class DomainInfo(BaseModel):
    domain: str
    version: str
    group: dict[str, Any] = Field(description='{"id": ..., "members": [...]}')
    labels: list[LabelInfoOut]
    metrics: dict[str, Any] = Field(description="held-out metrics; metrics.decisions holds the test-split "
                                                "decision rates with 95% intervals")
    decision: dict[str, Any] = Field(description="the decision rule: targets, review threshold, scope cut, zero-shot "
                                                 "guard (decision.guard.weight: frozen CLIP's share of the label "
                                                 "distribution); {} for legacy bundles")
    can_flag: bool = Field(description="false when no unsafe label can reach its threshold (too little "
                                       "calibration data, or no unsafe label): this domain never flags")
    sha256: str
    created_at: str
    loaded_at: str
    prompt: dict[str, int | float] = Field(description="depth, group_tokens, private_tokens; cache_weight when the bundle "
                                                 "has a label cache")


class RouterInfo(BaseModel):
    version: str
    domains: list[str] = Field(description="domains it can route to (only served ones are chosen)")
    min_confidence: float = Field(description="below this router probability a routed image also goes to review")
    metrics: dict[str, Any] = Field(description="held-out exact-domain and group accuracy, confusion matrix")
    created_at: str


class DomainsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"domains": [{
        "domain": "photo", "version": "v0001", "group": {"id": "g0", "members": ["photo", "painting"]},
        "labels": [{"name": "weapon", "prompt": "a photo of a weapon.", "unsafe": True, "threshold": 0.5}],
        "metrics": {"accuracy": 0.93}, "sha256": "9f2c...", "created_at": "2026-11-24T00:00:00+00:00",
        "loaded_at": "2026-11-24T01:00:00+00:00", "prompt": {"depth": 4, "group_tokens": 4, "private_tokens": 4}}],
        "model": "tiny-clip"}]})
    domains: list[DomainInfo]
    model: str
    router: RouterInfo | None = Field(None, description="the domain router serving requests sent without a "
                                                        "domain; null when the store has none")


class ReloadItem(BaseModel):
    domain: str
    version: str
    previous: str | None = None
    kind: str | None = None
    message: str | None = None


class ReloadResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "ok": False, "generation": 3, "loaded": [{"domain": "photo", "version": "v0002", "previous": "v0001"}],
        "unchanged": [{"domain": "sketch", "version": "v0001"}],
        "refused": [{"domain": "comic", "version": "v0002", "kind": "checksum",
                     "message": "tensor sha256 ... differs from manifest ..."}],
        "domains": {"photo": "v0002", "sketch": "v0001", "comic": "v0001"}}]})
    ok: bool = Field(description="false when any bundle was refused (the previous version keeps serving)")
    generation: int
    loaded: list[ReloadItem]
    unchanged: list[ReloadItem]
    refused: list[ReloadItem]
    domains: dict[str, str] = Field(description="domain -> version now serving")


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])
    domains: int = 0
    reason: str | None = None


# ---------------------------------------------------------------- admin: labels without retraining
OpenAICategory = Literal["harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                         "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                         "sexual/minors", "violence", "violence/graphic"]


class LabelAddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "star", "prompt": "a photo of a star.", "unsafe": True, "threshold": 0.5,
         "openai_category": "violence"}]})
    name: str = Field(description="label name, unique in the domain", min_length=1, max_length=64,
                      pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
    prompt: str = Field(description="text fed to CLIP through the domain's text prompts", min_length=1,
                        max_length=300)
    unsafe: bool = Field(description="flagging this label is a moderation hit")
    threshold: float = Field(0.5, gt=0.0, le=1.0, description="probability (the closed-set softmax: the label is "
                                                               "uncalibrated) at or above which it flags")
    openai_category: OpenAICategory | None = Field(None, description="OpenAI moderation category it also reports")


class LabelChangeResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "domain": "photo", "version": "v0002", "previous": "v0001",
        "labels": [{"name": "knife", "prompt": "a photo of a knife.", "unsafe": True, "threshold": 0.58,
                    "calibrated": True, "openai_category": "violence"},
                   {"name": "star", "prompt": "a photo of a star.", "unsafe": True, "threshold": 0.5,
                    "calibrated": False, "openai_category": None}],
        "reload": {"ok": True, "generation": 2, "loaded": [{"domain": "photo", "version": "v0002",
                                                            "previous": "v0001"}],
                   "unchanged": [], "refused": [], "domains": {"photo": "v0002"}}}]})
    domain: str
    version: str = Field(description="the version just published (now CURRENT)")
    previous: str = Field(description="the version it replaced")
    labels: list[LabelInfoOut]
    reload: ReloadResponse = Field(description="the hot reload that followed")


# ---------------------------------------------------------------- request bodies (multipart or JSON)
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


def body_doc(json_model: type[BaseModel], multipart_schema: dict | None = None) -> dict:
    """`openapi_extra` documenting a request body read by hand: JSON from `json_model`, plus multipart."""
    content = {"application/json": {"schema": _inline_refs(json_model.model_json_schema())}}
    if multipart_schema is not None:
        content = {"multipart/form-data": {"schema": multipart_schema}, **content}
    return {"requestBody": {"required": True, "content": content}}


CLASSIFY_BODY = body_doc(ClassifyRequest, {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary", "description": "the image file"},
                   "domain": {"type": "string", "minLength": 1, "description": _DOMAIN_DOC, "example": "photo"}}})
CLASSIFY_BODY["requestBody"]["content"]["image/*"] = {
    "schema": {"type": "string", "format": "binary", "description": "the image itself (domain: ?domain=)"}}
CLASSIFY_BODY["parameters"] = [{"name": "domain", "in": "query", "required": False, "schema": {
    "type": "string", "minLength": 1}, "description": "the domain, instead of (or agreeing with) the body's"}]
BATCH_BODY = body_doc(BatchRequest, {
    "type": "object", "required": ["images"],
    "properties": {"images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}},
                   "domains": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1},
                               "description": "one domain per image (or a single domain for all); `auto` or "
                                              "absent: routed"}}})
