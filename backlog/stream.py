"""Streaming: decode workers feed batched model calls, with a bounded number of images in flight.

`stream_outcomes` is the one scoring loop: the local engine runs it over the whole listing and
every Ray actor runs it over each batch Ray hands it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice

from torch import Tensor

from .inputs import Item, read_bytes
from .scorer import Outcome, Scorer


def _prepare(scorer: Scorer, chunk: list[Item]) -> list[Tensor | str]:
    """In a decode worker: read and preprocess a chunk; a bad image becomes its error message."""
    out: list[Tensor | str] = []
    for data in read_bytes(chunk):
        try:
            out.append(scorer.pixels(data))
        except Exception as e:  # noqa: BLE001 - whatever a hostile file raises, it fails alone
            out.append(f"{type(e).__name__}: {e}")
    return out


def _finish(scorer: Scorer, chunk: list[Item], job: Future) -> Iterator[tuple[Item, Outcome]]:
    """In the caller's thread: one model call for the chunk's good images, then yield in listing order."""
    prepared = job.result()
    good = [k for k, p in enumerate(prepared) if not isinstance(p, str)]
    decisions = iter(scorer.decide([prepared[k] for k in good]) if good else [])
    for it, p in zip(chunk, prepared, strict=True):
        yield it, (p if isinstance(p, str) else next(decisions))


def stream_outcomes(scorer: Scorer, items: Iterable[Item], batch_size: int,
                    workers: int) -> Iterator[tuple[Item, Outcome]]:
    """(item, decision or error message) for every item, in input order.

    Memory is bounded whatever the input size: at most `workers + 1` chunks of `batch_size`
    images are read or decoded ahead of the model.
    """
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backlog-decode") as pool:
        pending: deque[tuple[list[Item], Future]] = deque()
        while chunk := list(islice(it, batch_size)):
            pending.append((chunk, pool.submit(_prepare, scorer, chunk)))
            if len(pending) > workers:
                yield from _finish(scorer, *pending.popleft())
        while pending:
            yield from _finish(scorer, *pending.popleft())
