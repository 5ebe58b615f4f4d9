"""Review statistics: agreement of the model with reviewers, and the audit estimates with Wilson intervals.

Audit estimates are over the decided audit items of a domain (a uniform sample of the answers
that were not sent to review):
  * false_flag: the share of audited answers that were flagged and judged benign;
  * miss: the share of audited answers judged unsafe that were neither flagged nor sent to review.
Both share one denominator, `n`, so they read as rates per answer of production traffic.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> dict:
    """`{"rate", "lo", "hi"}`: k/n with its Wilson score interval (rate None and [0, 1] for n = 0)."""
    if n <= 0:
        return {"rate": None, "lo": 0.0, "hi": 1.0}
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"rate": p, "lo": max(0.0, centre - half), "hi": min(1.0, centre + half)}


@dataclass(frozen=True)
class DecidedRow:
    domain: str
    reason: str
    model_label: str | None  # the answer's top_label
    model_flagged: bool
    model_review: bool
    verdict_label: str | None
    verdict_unsafe: bool


def domain_stats(pending: dict[str, int], decided: Iterable[DecidedRow]) -> dict:
    """`{"domains": {D: {"pending", "decided", "agreement", "audit", "labels"}}}` (DESIGN §13, plus per label)."""
    by_domain: dict[str, list[DecidedRow]] = defaultdict(list)
    for r in decided:
        by_domain[r.domain].append(r)
    out = {}
    for d in sorted(set(pending) | set(by_domain)):
        rows = by_domain.get(d, [])
        agree = sum(r.model_label == r.verdict_label for r in rows)
        audit = [r for r in rows if r.reason == "audit"]
        false_flags = sum(r.model_flagged and not r.verdict_unsafe for r in audit)
        misses = sum(r.verdict_unsafe and not r.model_flagged and not r.model_review for r in audit)
        out[d] = {
            "pending": pending.get(d, 0),
            "decided": len(rows),
            "agreement": wilson(agree, len(rows))["rate"],
            "audit": {"n": len(audit), "false_flag": wilson(false_flags, len(audit)),
                      "miss": wilson(misses, len(audit))},
            "labels": _label_stats(rows),
        }
    return {"domains": out}


def _label_stats(rows: list[DecidedRow]) -> dict:
    """Per label (reviewer's or model's; "none" for no label): how often each side said it and both did."""
    names = sorted({r.verdict_label or "none" for r in rows} | {r.model_label or "none" for r in rows})
    out = {}
    for name in names:
        said = [r for r in rows if (r.verdict_label or "none") == name]
        model = [r for r in rows if (r.model_label or "none") == name]
        both = sum((r.model_label or "none") == name for r in said)
        out[name] = {"reviewer": len(said), "model": len(model), "both": both,
                     "recall": wilson(both, len(said))["rate"], "precision": wilson(both, len(model))["rate"]}
    return out
