"""Options of `python -m training router` (and of `fit`'s router step); light, so the CLI imports it early."""

from __future__ import annotations

from dataclasses import dataclass

from .config import opt


@dataclass
class RouterConfig:
    router_version: str = opt("", "router version to publish (empty: the store's next vNNNN under _router/)")
    min_confidence: float = opt(0.5, "a routed image whose top domain probability is below this also goes to "
                                     "review (needs_review)")
    router_l2: float = opt(1e-5, "ridge penalty of the logistic regression on standardised features")
