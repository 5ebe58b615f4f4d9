"""Request and response schemas of the review routes (DESIGN §13): items, verdicts, stats."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .schemas import error_doc


class ReviewVerdict(BaseModel):
    label: str | None = Field(description="the reviewer's label; null: none of the labels (benign)")
    unsafe: bool
    reviewer: str
    decided_at: str


class ReviewClaim(BaseModel):
    reviewer: str
    expires_at: str


class ReviewItem(BaseModel):
    id: str = Field(description="the answer's review_id")
    domain: str
    version: str = Field(description="bundle version that answered")
    reason: Literal["needs_review", "audit", "out_of_scope"]
    created_at: str
    answer: dict[str, Any] = Field(description="the /classify answer as returned")
    verdict: ReviewVerdict | None
    claim: ReviewClaim | None = Field(None, description="who holds the item, until when")
    content_type: str | None = None
    image_available: bool = Field(True, description="false once retention purged the image bytes")


class ReviewItems(BaseModel):
    items: list[ReviewItem]


class VerdictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"label": "weapon", "unsafe": True, "reviewer": "ana"}, {"label": None, "unsafe": False, "reviewer": "ana"}]})
    label: str | None = Field(description="one of the domain's labels, or null for none of them (benign)")
    unsafe: bool = Field(description="the image is unsafe")
    reviewer: str = Field(min_length=1, max_length=128)


class Rate(BaseModel):
    rate: float | None = Field(description="k / n; null when n = 0")
    lo: float = Field(description="95% Wilson interval, lower end")
    hi: float


class AuditStats(BaseModel):
    n: int = Field(description="decided audit items")
    false_flag: Rate = Field(description="share of audited answers flagged and judged benign")
    miss: Rate = Field(description="share of audited answers judged unsafe, neither flagged nor sent to review")


class LabelReviewStats(BaseModel):
    reviewer: int = Field(description="decided items the reviewer gave this label")
    model: int = Field(description="decided items whose answer's top_label was this label")
    both: int
    recall: float | None = Field(description="both / reviewer")
    precision: float | None = Field(description="both / model")


class DomainReviewStats(BaseModel):
    pending: int
    decided: int
    agreement: float | None = Field(description="share of decided items where the answer's top_label (null out "
                                                "of scope) equals the reviewer's label (null: none)")
    audit: AuditStats
    labels: dict[str, LabelReviewStats] = Field(description="per label; 'none' stands for no label")


class ReviewStats(BaseModel):
    domains: dict[str, DomainReviewStats]


REVIEW_ERRORS = {
    401: error_doc("Missing or wrong bearer token", "unauthorized", "a valid bearer token is required"),
    403: error_doc("Review routes are disabled (no MODERATION_REVIEWER_TOKEN)", "review_disabled",
                   "review routes are disabled: set MODERATION_REVIEWER_TOKEN"),
    503: error_doc("The review queue is off or its database does not answer", "review_unavailable",
                   "the review database does not answer"),
}
