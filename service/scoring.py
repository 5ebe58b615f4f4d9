"""An image's decision (`promptclip.decide_batch`, made in the engine) -> the /classify answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from promptclip.router import Route

    from .registry import DomainEntry


def build_result(entry: DomainEntry, d: dict, *, model: str, latency_ms: float, routing: dict | None = None) -> dict:
    """`d` is the image's decision (bundle label order); the answer lists labels highest score first.

    `routing` (`route_info`) is set when the router chose the domain. A routed image
    whose router confidence is below the router's min_confidence and that is not flagged goes to
    review: the domain it was scored in may be the wrong one.
    """
    review = d["needs_review"] or bool(routing and routing["low_confidence"] and not d["flagged"])
    labels = sorted(d["labels"], key=lambda lab: (lab["softmax"], lab["score"]), reverse=True)  # the decision's order
    return {
        "domain": entry.domain,
        "bundle": {"version": entry.version, "group": str(entry.group.get("id", ""))},
        "model": model,
        "labels": labels,
        "top_label": d["top_label"],
        "out_of_scope": not d["in_scope"],
        "scope_score": d["scope_score"] if abs(d["scope_score"]) != float("inf") else None,
        "flagged": d["flagged"],
        "needs_review": review,
        "rule": "legacy" if entry.rule.legacy else "calibrated",
        "latency_ms": round(latency_ms, 3),
    } | ({"routing": routing} if routing is not None else {})


def route_info(route: Route, router_version: str) -> dict:
    """The `routing` object of a routed answer."""
    return {"domain": route.domain, "confidence": round(route.confidence, 6), "low_confidence": route.low_confidence,
            "candidates": [{"domain": d, "probability": round(p, 6)} for d, p in route.candidates],
            "router": router_version}
