"""Images through the service: decode, classify (routing those sent without a domain), answer.

/classify, /classify/batch and /v1/moderations all call `classify_items`, so they answer alike:
an item's domain is checked, its bytes decoded, and it joins the engine's queue; the engine
routes the images sent without a domain inside the same micro-batch (service.engine) and
builds the answers.

Each answer is also considered for the review queue (DESIGN §13) when it comes back
(`_to_review`): out of scope (when MODERATION_REVIEW_OUT_OF_SCOPE is on), needs_review, or a
random audit share of the others. The answer gets its `review_id` here; the write itself is
handed to the review writer's bounded queue (review.ReviewWriter) and never waits for or fails
on the store.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from review import NewItem

from .errors import ApiError
from .items import Item, lookup, no_router, sniff_content_type
from .openai_schemas import moderation_result
from .registry import DomainEntry, Snapshot
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
    """Per item, the /classify answer (a dict) or the ApiError it failed with alone.

    A request's images are decoded together, then queued in one step, so that they land in the same
    micro-batch. One deadline, `t0` + MODERATION_REQUEST_TIMEOUT_S, covers the decode, the queue and
    the model."""
    deadline = t0 + state.settings.request_timeout_s
    out: list[Any] = [it.error for it in items]
    todo: list[tuple[int, DomainEntry | None]] = []
    for i, it in enumerate(items):
        if it.error is None:
            try:
                entry = None if it.domain is None else lookup(snapshot, it.domain)
                if entry is None and not snapshot.routable:
                    raise no_router(snapshot)
                todo.append((i, entry))
            except ApiError as e:
                out[i] = e
    pixels = await state.decoder.decode_many([items[i].data for i, _ in todo], deadline)
    ready = []
    for (i, entry), p in zip(todo, pixels, strict=True):
        if isinstance(p, ApiError):
            out[i] = p
        else:
            ready.append((i, entry, p))
    if not ready:
        return out
    try:
        answers = await state.engine.classify_many([(p, e) for _, e, p in ready], snapshot, deadline)
    except ApiError as e:  # the request's deadline passed
        answers = [e] * len(ready)
    latency = round((time.perf_counter() - t0) * 1000.0, 3)
    for (i, _, _), a in zip(ready, answers, strict=True):
        if not isinstance(a, ApiError):
            a["latency_ms"] = latency
            _to_review(state, a, items[i], snapshot.domains[a["domain"]])
        out[i] = a
    return out


def _to_review(state: ServiceState, result: dict, item: Item, entry: DomainEntry) -> None:
    """Hand the answer to the review writer when it goes to review (it gets its `review_id` here)."""
    if state.review_writer is None:
        return
    s = state.settings
    reason = review_reason(result, s.review_out_of_scope, s.review_audit_rate)
    if reason is not None:
        result["review_id"] = rid = str(uuid.uuid4())
        state.review_writer.submit(NewItem(
            id=rid, image=item.data, content_type=item.content_type or sniff_content_type(item.data),
            domain=entry.domain, version=entry.version, reason=reason, answer=result, created_at=time.time()))


def review_reason(answer: dict, review_out_of_scope: bool, audit_rate: float) -> str | None:
    """Why an answer goes to the review queue (out_of_scope, needs_review, audit), or None."""
    if answer["out_of_scope"] and review_out_of_scope:
        return "out_of_scope"
    if answer["needs_review"]:
        return "needs_review"
    if audit_rate > 0 and random.random() < audit_rate:
        return "audit"
    return None
