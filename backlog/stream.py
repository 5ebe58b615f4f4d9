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

from promptclip.images import ACCEPTED, UNDECODABLE, ImageRejected, decode_rgb

from .inputs import Item, read_bytes
from .output import error_text
from .scorer import Outcome, Scorer

UNREADABLE = "unreadable_input"  # the file or Parquet row could not be read (no HTTP twin: the service reads no files)


def pixels(scorer: Scorer, data: bytes) -> Tensor:
    """(3, H, W) model input through the service's decode and limits; ImageRejected says why not."""
    cfg = scorer.cfg
    img = decode_rgb(data, cfg.max_image_pixels, max_bytes=cfg.max_image_bytes, min_side=cfg.min_image_side)
    try:
        return scorer.clip.preprocess(img)
    except Exception:  # noqa: BLE001 - as the service answers it
        raise ImageRejected(UNDECODABLE, "the image could not be preprocessed") from None


def unreadable(item: Item, error: Exception) -> str:
    """The error row text of an item whose bytes could not be read (a missing file, a bad Parquet row group)."""
    what = f"{error.strerror or error}" if isinstance(error, OSError) else f"{error}"
    return error_text(UNREADABLE, f"cannot read {item.id}: {what}")


def _prepare(scorer: Scorer, chunk: list[Item]) -> list[Tensor | str]:
    """In a decode worker: read and preprocess a chunk; a bad image becomes its error text,
    "code: message" with the code and message `/classify` answers for the same bytes."""
    out: list[Tensor | str] = []
    for it, data in zip(chunk, read_bytes(chunk), strict=True):
        if isinstance(data, Exception):
            out.append(unreadable(it, data))
            continue
        try:
            out.append(pixels(scorer, data))
        except ImageRejected as e:
            out.append(error_text(e.code, e.message))
        except Exception:  # noqa: BLE001 - whatever a hostile file raises, it fails alone
            out.append(error_text(UNDECODABLE, f"not a decodable image; send {ACCEPTED}"))
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
