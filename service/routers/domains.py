"""GET /domains: the bundles being served, and the domain router."""

from __future__ import annotations

from fastapi import APIRouter

from promptclip.router import DomainRouter

from ..registry import DomainEntry
from ..schemas import DomainsResponse
from ..state import StateDep

router = APIRouter(tags=["domains"])


@router.get("/domains", response_model=DomainsResponse, summary="Loaded bundles, one per domain")
async def domains(state: StateDep) -> dict:
    snapshot = state.registry.snapshot
    return {
        "model": state.model_name,
        "domains": [
            {"domain": e.domain, "version": e.version, "group": e.group,
             "labels": label_infos(e),
             "metrics": e.metrics, "decision": e.decision, "can_flag": e.rule.can_flag, "sha256": e.sha256,
             "created_at": e.created_at, "loaded_at": e.loaded_at, "prompt": e.prompt}
            for e in (snapshot.domains[d] for d in snapshot.known())
        ],
        "router": router_info(snapshot.router),
    }


def label_infos(e: DomainEntry) -> list[dict]:
    """A served domain's labels as /domains lists them (calibrated: its probability is Platt-calibrated)."""
    return [{"name": lab.name, "prompt": lab.prompt, "unsafe": lab.unsafe, "threshold": lab.threshold,
             "calibrated": rule.platt is not None and not e.rule.legacy, "openai_category": lab.openai_category}
            for lab, rule in zip(e.labels, e.rule.labels, strict=True)]


def router_info(router: DomainRouter | None) -> dict | None:
    if router is None:
        return None
    m = router.manifest
    return {"version": m.version, "domains": m.domains, "min_confidence": m.min_confidence, "metrics": m.metrics,
            "created_at": m.created_at}
