"""Request, response and error models of the OpenAI-compatible POST /v1/moderations, in OpenAI's shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .schemas import PNG_1PX, RETRY_AFTER, RoutingInfo, body_doc


class ImageURL(BaseModel):
    url: str = Field(description="a data URI (data:image/png;base64,...); http(s) URLs are refused: the "
                                 "server fetches nothing")


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class TextPart(BaseModel):
    type: Literal["text"]
    text: str = Field(description="refused with 400: this service moderates images")


class ModerationRequest(BaseModel):
    """OpenAI's moderation request; only image parts given as data URIs are moderated."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "photo", "input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_1PX}}]},
        {"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_1PX}}]}]})
    model: str | None = Field(None, description="a domain, or `auto` (the default): the domain router picks "
                                                "each image's domain")
    input: str | list[str | ImagePart | TextPart] = Field(description="image parts; text is refused with 400")


class ModerationResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    flagged: bool = Field(description="equals /classify's `flagged` for the same image and domain")
    categories: dict[str, bool] = Field(description="per unsafe label of the domain, and per OpenAI category "
                                                    "one maps to: flagged")
    category_scores: dict[str, float] = Field(description="the label's probability (for an OpenAI category: the "
                                                          "highest of its labels')")
    category_applied_input_types: dict[str, list[str]] = Field(description='["image"] per category')
    domain: str = Field(description="the domain that moderated the image")
    needs_review: bool
    routing: RoutingInfo | None = None


class ModerationResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "modr-3f1c2a9b8e7d4c6a", "model": "photo@v0001",
        "results": [{"flagged": True, "categories": {"knife": True, "violence": True, "pill": False},
                     "category_scores": {"knife": 0.78, "violence": 0.78, "pill": 0.03},
                     "category_applied_input_types": {"knife": ["image"], "violence": ["image"], "pill": ["image"]},
                     "domain": "photo", "needs_review": False, "routing": None}]}]})
    id: str
    model: str = Field(description="<domain>@<version> that moderated the inputs (comma-separated when routing "
                                   "chose several)")
    results: list[ModerationResult] = Field(description="one per image part, in order")


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = None
    code: str | None = Field(None, examples=["model_not_found"])


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody


def openai_error_doc(description: str, code: str, message: str, param: str | None = None,
                     type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"model": OpenAIErrorResponse, "description": description, "content": {"application/json": {
        "example": {"error": {"message": message, "type": type_, "param": param, "code": code}}}}}


MODERATION_ERRORS = {
    400: openai_error_doc("Text input, a remote URL, an undecodable image or a malformed body", "remote_url_not_allowed",
                          "input[0]: remote URLs are not fetched (SSRF); send the image as a data URI", "input"),
    404: openai_error_doc("Unknown model (domain)", "model_not_found", "unknown model 'x'; models: ['photo', "
                          "'auto']", "model"),
    408: openai_error_doc("The body did not arrive in time", "request_timeout", "the request body did not arrive "
                          "within 30 s"),
    413: openai_error_doc("Too many bytes, pixels or inputs", "payload_too_large", "request body exceeds the limit"),
    415: openai_error_doc("Not JSON, or an unsupported image format", "unsupported_media_type",
                          "send application/json"),
    422: openai_error_doc("No domain and no router", "domain_required", "no domain was given and no domain router "
                          "is loaded", "model"),
    500: openai_error_doc("The model failed on the batch", "inference_failed", "the model failed on this batch",
                          type_="server_error"),
    503: {**openai_error_doc("Queue full or shutting down (retry after Retry-After)", "queue_full",
                             "the server is at capacity", type_="server_error"), "headers": RETRY_AFTER},
    504: openai_error_doc("No result within the request timeout", "timeout", "no result within 30 s",
                          type_="server_error"),
}


MODERATION_BODY = body_doc(ModerationRequest)


def moderation_result(entry: Any, answer: dict) -> dict:
    """OpenAI's per-input result from a /classify answer under `entry` (a served DomainEntry): unsafe labels
    and their OpenAI categories."""
    by_name = {lab["label"]: lab for lab in answer["labels"]}
    cats: dict[str, bool] = {}
    scores: dict[str, float] = {}
    for info in entry.labels:
        if not info.unsafe:
            continue
        lab = by_name[info.name]
        for key in (info.name, info.openai_category) if info.openai_category else (info.name,):
            cats[key] = cats.get(key, False) or bool(lab["flagged"])
            scores[key] = max(scores.get(key, 0.0), float(lab["probability"]))
    return {"flagged": answer["flagged"], "categories": cats, "category_scores": scores,
            "category_applied_input_types": {k: ["image"] for k in cats},
            "domain": answer["domain"], "needs_review": answer["needs_review"], "routing": answer.get("routing")}
