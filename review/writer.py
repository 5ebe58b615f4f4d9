"""Queue items leave the request path here: a bounded queue, one thread writing batches to the store.

`submit` never blocks and never raises: when the queue is full, or a batch cannot be written
(store down, disk full), the items are dropped and counted through `on_dropped`. The thread
also migrates the schema on first use (retrying while the store is down), refreshes the pending
count every `refresh_s`, and runs the retention purge every `purge_s`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

from .store import NewItem, ReviewStore

log = logging.getLogger(__name__)
_STOP = object()


class ReviewWriter:
    def __init__(self, store: ReviewStore, *, max_queue: int = 1024, max_batch: int = 64,
                 on_enqueued: Callable[[str, int], None] = lambda reason, n: None,
                 on_dropped: Callable[[int], None] = lambda n: None,
                 on_pending: Callable[[int], None] = lambda n: None,
                 refresh_s: float = 1.0, purge_s: float = 3600.0):
        self.store = store
        self.max_batch = max_batch
        self.on_enqueued, self.on_dropped, self.on_pending = on_enqueued, on_dropped, on_pending
        self.refresh_s, self.purge_s = refresh_s, purge_s
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._ready = False  # schema migrated (store.ensure_schema)
        self._last_error = 0.0
        self._thread = threading.Thread(target=self._run, name="review-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: NewItem) -> bool:
        """Queue `item` for writing; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.on_dropped(1)
            return False

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (within `timeout_s`), then stop the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
        self._thread.join(timeout_s)

    # ------------------------------------------------------------------ the thread
    def _ensure_schema(self) -> bool:
        if not self._ready:
            try:
                self.store.ensure_schema()
                self._ready = True
            except Exception as e:  # store down: the next batch retries
                self._warn("cannot open the review database", e)
        return self._ready

    def _warn(self, what: str, e: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error > 30.0:  # one line per 30 s while the store is down, not one per batch
            self._last_error = now
            log.warning("%s (%s): %s; review items are dropped until it answers", what,
                        self.store.engine.url.render_as_string(), str(e).strip().splitlines()[0] if str(e) else e)

    def _run(self) -> None:
        self._ensure_schema()
        next_refresh, next_purge = 0.0, time.monotonic() + 5.0
        stopping = False
        while not stopping:
            batch: list[NewItem] = []
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                first = None
            if first is _STOP:
                stopping = True
            elif first is not None:
                batch.append(first)
                while len(batch) < self.max_batch:  # whatever else is queued now joins this transaction
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stopping = True
                        break
                    batch.append(nxt)
            if batch:
                self._write(batch)
            now = time.monotonic()
            if self._ready and now >= next_refresh:  # a COUNT at most once per refresh_s
                next_refresh = now + self.refresh_s
                self._refresh_pending()
            if self._ready and now >= next_purge:
                next_purge = now + self.purge_s
                try:
                    self.store.purge()
                except Exception as e:
                    self._warn("review retention purge failed", e)
        # drain what is left after the stop marker (requests answered during shutdown)
        rest = []
        while True:
            try:
                it = self._queue.get_nowait()
            except queue.Empty:
                break
            if it is not _STOP:
                rest.append(it)
        if rest:
            self._write(rest)

    def _write(self, batch: list[NewItem]) -> None:
        if not self._ensure_schema():
            self.on_dropped(len(batch))
            return
        try:
            self.store.add(batch)
        except Exception as e:
            self._warn("cannot write review items", e)
            self.on_dropped(len(batch))
            return
        counts: dict[str, int] = {}
        for it in batch:
            counts[it.reason] = counts.get(it.reason, 0) + 1
        for reason, n in counts.items():
            self.on_enqueued(reason, n)

    def _refresh_pending(self) -> None:
        try:
            self.on_pending(sum(self.store.pending_counts().values()))
        except Exception as e:
            self._warn("cannot count pending review items", e)
