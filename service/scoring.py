"""A scores row -> the /classify answer, through the one decision rule in `promptclip.decisions`."""

from __future__ import annotations

from promptclip.decisions import decide

from .registry import DomainEntry


def build_result(entry: DomainEntry, row: dict, *, model: str, review_margin: float, review_out_of_scope: bool,
                 latency_ms: float) -> dict:
    """`row` is the image's scores row (bundle label order); the answer lists labels highest score first."""
    d = decide(row, entry.rule, review_out_of_scope=review_out_of_scope, review_margin=review_margin)
    labels = sorted(d["labels"], key=lambda lab: lab["score"], reverse=True)
    return {
        "domain": entry.domain,
        "bundle": {"version": entry.version, "group": str(entry.group.get("id", ""))},
        "model": model,
        "labels": labels,
        "top_label": d["top_label"],
        "out_of_scope": not d["in_scope"],
        "scope_score": d["scope_score"] if abs(d["scope_score"]) != float("inf") else None,
        "flagged": d["flagged"],
        "needs_review": d["needs_review"],
        "rule": "legacy" if entry.rule.legacy else "calibrated",
        "latency_ms": round(latency_ms, 3),
    }
