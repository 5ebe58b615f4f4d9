"""Images through the service: decode, route those sent without a domain, classify, build the answers.

/classify, /classify/batch and /v1/moderations all call `classify_items`, so they answer alike:
an item is decoded (its domain checked first), items without a domain are routed together, and
every item is queued in one step so that they land in the same micro-batch.

Each answer is also considered for the review queue (DESIGN §13) where it is built (`_answer`):
out of scope (when MODERATION_REVIEW_OUT_OF_SCOPE is on), needs_review, or a random audit share
of the others. The answer gets its `review_id` here; the write itself is handed to the review
writer's bounded queue (review.ReviewWriter) and never waits for or fails on the store.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

from review import NewItem

from .errors import ApiError
from .items import Item, lookup, sniff_content_type
from .openai_schemas import moderation_result
from .registry import DomainEntry, Snapshot
from .routing import route_info
from .scoring import build_result
from .state import ServiceState


class LocalBackend:
    """The engine of this process behind the hot routes (service.state.Backend): views are the registry's
    snapshots, so a request finishes on the bundles it started on."""

    def __init__(self, state: ServiceState):
        self.state = state

    def view(self) -> Snapshot:
        return self.state.registry.snapshot

    async def classify(self, view: Snapshot, items: list[Item], t0: float, render: str | None = None) -> list[Any]:
        answers = await classify_items(self.state, view, items, t0)
        if render is None:
            return answers
        return [a if isinstance(a, ApiError) else RENDERERS[render](view, a) for a in answers]


def _moderation(view: Snapshot, answer: dict) -> dict:
    return {"model": f"{answer['domain']}@{answer['bundle']['version']}",
            "result": moderation_result(view.domains[answer["domain"]], answer)}


RENDERERS = {"moderation": _moderation}  # answers rendered where the bundles are (the OpenAI route's)


async def classify_items(state: ServiceState, snapshot: Snapshot, items: list[Item], t0: float) -> list[Any]:
    """Per item, the /classify answer (a dict) or the ApiError it failed with alone."""

    async def decode(it: Item):
        if it.error is not None:
            return it.error
        try:
            entry = None if it.domain is None else lookup(snapshot, it.domain)
            return entry, await state.decoder.decode(it.data)
        except ApiError as e:
            return e

    decoded: list[Any] = list(await asyncio.gather(*(decode(it) for it in items)))
    routing: dict[int, dict] = {}
    todo = [i for i, d in enumerate(decoded) if not isinstance(d, ApiError) and d[0] is None]
    if todo:
        try:
            routes = await state.routing.route([decoded[i][1] for i in todo], snapshot)
        except ApiError as e:
            for i in todo:
                decoded[i] = e
        else:
            for i, r in zip(todo, routes, strict=True):
                decoded[i] = (snapshot.domains[r.domain], decoded[i][1])
                routing[i] = route_info(r, snapshot.router.version)

    async def infer(i: int, d: Any):
        if isinstance(d, ApiError):
            return d
        try:
            return await _answer(state, snapshot, d[0], d[1], routing.get(i), t0, items[i])
        except ApiError as e:
            return e

    return list(await asyncio.gather(*(infer(i, d) for i, d in enumerate(decoded))))


async def _answer(state: ServiceState, snapshot: Snapshot, entry: DomainEntry, pixels, routing: dict | None,
                  t0: float, item: Item) -> dict:
    s = state.settings
    row = await state.engine.classify(pixels, entry, snapshot)
    result = build_result(entry, row, model=state.model_name, latency_ms=(time.perf_counter() - t0) * 1000.0,
                          routing=routing)
    m = state.metrics
    m.images.labels(entry.domain).inc()
    if result["flagged"]:
        m.flagged.labels(entry.domain).inc()
    seen = {"flagged": result["flagged"], "needs_review": result["needs_review"],
            "out_of_scope": result["out_of_scope"], "routed": routing is not None,
            "routed_low_confidence": bool(routing and routing["low_confidence"])}
    for name in (k for k, v in seen.items() if v):
        m.decisions.labels(entry.domain, name).inc()
    if state.review_writer is not None:
        reason = review_reason(result, s.review_out_of_scope, s.review_audit_rate)
        if reason is not None:
            result["review_id"] = rid = str(uuid.uuid4())
            state.review_writer.submit(NewItem(
                id=rid, image=item.data, content_type=item.content_type or sniff_content_type(item.data),
                domain=entry.domain, version=entry.version, reason=reason, answer=result, created_at=time.time()))
    return result


def review_reason(answer: dict, review_out_of_scope: bool, audit_rate: float) -> str | None:
    """Why an answer goes to the review queue (out_of_scope, needs_review, audit), or None."""
    if answer["out_of_scope"] and review_out_of_scope:
        return "out_of_scope"
    if answer["needs_review"]:
        return "needs_review"
    if audit_rate > 0 and random.random() < audit_rate:
        return "audit"
    return None
