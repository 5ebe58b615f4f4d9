"""GET /domains: the bundles being served."""

from __future__ import annotations

from fastapi import APIRouter

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
             "labels": [{"name": lab.name, "prompt": lab.prompt, "unsafe": lab.unsafe, "threshold": lab.threshold,
                         "calibrated": rule.platt is not None and not e.rule.legacy}
                        for lab, rule in zip(e.labels, e.rule.labels, strict=True)],
             "metrics": e.metrics, "decision": e.decision, "sha256": e.sha256, "created_at": e.created_at, "loaded_at": e.loaded_at,
             "prompt": e.prompt}
            for e in (snapshot.domains[d] for d in snapshot.known())
        ],
    }
