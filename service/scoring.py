"""Scores -> the /classify answer: sorted labels, flags and the review band."""

from __future__ import annotations

from .registry import DomainEntry


def build_result(entry: DomainEntry, scores: list[float], probs: list[float], *, model: str,
                 review_margin: float, latency_ms: float) -> dict:
    """`scores` and `probs` are in the bundle's label order; the answer lists labels highest score first.

    flagged: an unsafe label with probability >= its threshold.
    needs_review: not flagged there, but an unsafe label with probability in [threshold - margin, threshold).
    """
    labels = []
    flagged = review = False
    for lab, s, p in zip(entry.labels, scores, probs, strict=True):
        hit = lab.unsafe and p >= lab.threshold
        flagged |= hit
        review |= lab.unsafe and not hit and p >= lab.threshold - review_margin
        labels.append({"label": lab.name, "score": s, "probability": p, "threshold": lab.threshold,
                       "unsafe": lab.unsafe, "flagged": hit})
    labels.sort(key=lambda d: d["score"], reverse=True)
    return {
        "domain": entry.domain,
        "bundle": {"version": entry.version, "group": str(entry.group.get("id", ""))},
        "model": model,
        "labels": labels,
        "top_label": labels[0]["label"],
        "flagged": flagged,
        "needs_review": review,
        "latency_ms": round(latency_ms, 3),
    }
