"""Dynamic micro-batching: concurrent requests of any domains share one image-tower forward pass.

Requests enter a bounded asyncio queue. One batcher task takes the first waiting request,
gathers more until MAX_BATCH or MAX_WAIT_MS, and runs the batch in a single model thread
under `torch.inference_mode`, so the event loop never blocks on the model. Per micro-batch, in
the model thread: one upload of the batch's pixels; for images sent without a domain and those of
a domain whose bundle has a zero-shot guard, one bare forward pass (the snapshot's domain router
reads it for the former: a job kind of the same queue); one prompted
forward pass per prompt shape, each sample's prompts gathered from the snapshot's bank by row
index; the batched score and decision (promptclip.ModelRunner); the answers, counted in the
metrics once per batch.

The one seam for a faster image tower (CUDA graphs, compiled buckets) is the runner's
`encode`: `encode(images (B, 3, H, W) on device, prompts (B, depth, n, Wv)) -> (B, E)
normalised, (B, layers, Wv) taps`. `build_encode_fn` is the only place that picks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from promptclip import PromptedCLIP
from promptclip.runner import EncodeFn, ModelRunner

from .errors import ApiError, timeout_error
from .registry import DomainEntry, ShapeKey, Snapshot
from .scoring import build_result, route_info
from .threads import named_pool

log = logging.getLogger(__name__)


def build_encode_fn(prompted: PromptedCLIP, cuda_graphs: bool = False, max_batch: int = 32) -> EncodeFn:
    """The image encoder the engine calls: the one place a faster runner plugs in.

    On CUDA with `cuda_graphs`, promptclip.ImageRunner replays a CUDA graph per batch
    bucket (padded up to the next bucket); elsewhere the eager prompted image tower.
    """
    device = next(prompted.clip.parameters()).device
    if cuda_graphs and device.type == "cuda":
        from promptclip import DEFAULT_BUCKETS, ImageRunner

        buckets = tuple(b for b in DEFAULT_BUCKETS if b < max_batch) + (max_batch,)
        return ImageRunner(prompted, buckets=buckets, taps=True)
    return functools.partial(prompted.encode_image, taps=True)


class Answers:
    """One request's answers, filled in by the batcher as its images come out of micro-batches: one
    future per request, however many images it holds."""

    __slots__ = ("results", "left", "future")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop):
        self.results: list = [None] * n  # per image: its answer (service.scoring.build_result) or ApiError
        self.left = n
        self.future = loop.create_future()

    def set(self, i: int, value) -> None:
        if self.future.done():  # timed out or cancelled meanwhile
            return
        self.results[i] = value
        self.left -= 1
        if self.left == 0:
            self.future.set_result(self.results)


@dataclass(eq=False, slots=True)
class Job:
    pixels: Tensor  # (3, H, W) preprocessed, CPU (or already on the GPU when decoded there)
    entry: DomainEntry | None  # None: the snapshot's router picks the domain
    snapshot: Snapshot
    answers: Answers  # the request's; this image's answer goes to answers.results[index]
    index: int

    @property
    def done(self) -> bool:
        return self.answers.future.done()


class QueueFull(ApiError):
    def __init__(self, retry_after_s: int):
        super().__init__(503, "queue_full", "the server is at capacity; retry after the Retry-After delay",
                         {"Retry-After": str(retry_after_s)})


class ShuttingDown(ApiError):
    def __init__(self, retry_after_s: int):
        super().__init__(503, "shutting_down", "the server is shutting down; retry on another replica",
                         {"Retry-After": str(retry_after_s)})


class BatchingEngine:
    """Owns the queue, the batcher task and the model thread."""

    def __init__(self, prompted: PromptedCLIP, *, max_batch: int, max_wait_ms: float, max_queue: int,
                 timeout_s: float, retry_after_s: int = 1, metrics=None, encode: EncodeFn | None = None,
                 cuda_graphs: bool = False, arriving: Callable[[], int] | None = None,
                 review_out_of_scope: bool = False, review_margin: float = 0.1, model_name: str = ""):
        self.prompted = prompted
        self.review_out_of_scope, self.review_margin = review_out_of_scope, review_margin
        self.runner = ModelRunner(prompted, encode or build_encode_fn(prompted, cuda_graphs, max_batch))
        self.device = self.runner.device
        self.model_name = model_name
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.max_queue, self.timeout_s, self.retry_after_s = max_queue, timeout_s, retry_after_s
        self.metrics = metrics
        self.arriving = arriving or (lambda: 1)  # images admitted but not yet queued (None: always wait)
        self.queue: asyncio.Queue[Job] | None = None
        self.model_thread = named_pool("model", 1)
        self._task: asyncio.Task | None = None
        self._staging: Tensor | None = None  # pinned host buffer for CUDA uploads
        self.in_flight = 0  # jobs submitted and not yet answered
        self.model_cpu_seconds = 0.0  # CPU time of the image tower's forward passes (model thread only)
        self._counted_cpu = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._batch_loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.queue is not None:
            while not self.queue.empty():
                job = self.queue.get_nowait()
                job.answers.set(job.index, ShuttingDown(self.retry_after_s))
        self.model_thread.shutdown(wait=True)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted job is answered (or timeout)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.in_flight == 0

    # ------------------------------------------------------------------ requests
    async def classify(self, pixels: Tensor, entry: DomainEntry | None, snapshot: Snapshot,
                       deadline: float | None = None) -> dict:
        """The image's answer under `entry` (None: the domain the snapshot's router picks), latency_ms
        left to the caller; raises ApiError 503, or 504 once `deadline` (perf_counter) has passed."""
        (answer,) = await self.classify_many([(pixels, entry)], snapshot, deadline)
        if isinstance(answer, ApiError):
            raise answer
        return answer

    async def classify_many(self, images: list[tuple[Tensor, DomainEntry | None]], snapshot: Snapshot,
                            deadline: float | None = None) -> list:
        """Per image, its answer or ApiError (503 for the images the queue has no room for): all of a
        request's images are queued in one step, so that they share micro-batches, and wait on one future.
        Raises ApiError 504 once `deadline` (perf_counter) has passed."""
        timeout = self.timeout_s if deadline is None else deadline - time.perf_counter()
        if timeout <= 0:
            raise timeout_error(self.timeout_s)
        answers = Answers(len(images), asyncio.get_running_loop())
        queued = 0
        for i, (pixels, entry) in enumerate(images):
            try:
                self.queue.put_nowait(Job(pixels, entry, snapshot, answers, i))
                queued += 1
            except asyncio.QueueFull:
                answers.set(i, QueueFull(self.retry_after_s))
        self.in_flight += queued
        try:
            async with asyncio.timeout(timeout):  # cancels the future on timeout: the batcher skips its jobs
                return await answers.future
        except TimeoutError:
            raise timeout_error(self.timeout_s) from None
        finally:
            self.in_flight -= queued

    # ------------------------------------------------------------------ batching
    async def _collect(self) -> list[Job]:
        q = self.queue
        batch = [await q.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            while len(batch) < self.max_batch and not q.empty():
                batch.append(q.get_nowait())
            remaining = deadline - time.monotonic()
            # Wait only for images already on their way (being decoded): a lone request runs at
            # once, and under load batches still fill while the previous forward runs.
            if len(batch) >= self.max_batch or remaining <= 0 or self.arriving() <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await q.get())
            except TimeoutError:
                break
        return batch

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            depth = self.queue.qsize()
            batch = [j for j in batch if not j.done]  # timed out while queued
            if not batch:
                continue
            if self.metrics is not None:
                self.metrics.observe_batch(len(batch), depth)
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.model_thread, self._forward, batch)
            except asyncio.CancelledError:
                for j in batch:
                    j.answers.set(j.index, ShuttingDown(self.retry_after_s))
                raise
            except Exception as e:  # fan the failure out to every request of the batch; keep serving
                log.exception("batch of %d failed", len(batch))
                results = [ApiError(500, "inference_failed", f"the model failed on this batch ({type(e).__name__})")] \
                    * len(batch)
            else:
                if self.metrics is not None:
                    self.metrics.inference_seconds.observe(time.perf_counter() - t0)
                    self.metrics.observe_answers(results)
                    self.metrics.model_cpu.inc(self.model_cpu_seconds - self._counted_cpu)
                    self._counted_cpu = self.model_cpu_seconds
            for j, r in zip(batch, results, strict=True):
                j.answers.set(j.index, r)

    # ------------------------------------------------------------------ model thread
    def _upload(self, pixels: list[Tensor]) -> Tensor:
        """(B, 3, H, W) on the device; through a reused pinned buffer on CUDA."""
        if self.device.type != "cuda":
            return torch.stack(pixels)
        if any(p.device.type == "cuda" for p in pixels):  # JPEGs decoded on the GPU (ImageDecoder.device_jpeg)
            stream = torch.cuda.current_stream(self.device)
            for p in pixels:
                if p.device.type == "cuda":  # made on a decode thread's stream: keep its memory until this
                    p.record_stream(stream)  # stream's stack below has run (promptclip.device_decode)
            return torch.stack([p.to(self.device, non_blocking=True) for p in pixels])
        shape = (self.max_batch, *pixels[0].shape)
        if self._staging is None or self._staging.shape != shape:
            self._staging = torch.empty(shape, dtype=pixels[0].dtype, pin_memory=True)
        host = self._staging[: len(pixels)]
        torch.stack(pixels, out=host)
        out = host.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()  # the staging buffer is reused next batch
        return out

    def _forward(self, batch: list[Job]) -> list[dict]:
        """Runs in the model thread. Returns per job its answer (service.scoring.build_result)."""
        with torch.inference_mode():
            images = self._upload([j.pixels for j in batch])  # (B, 3, H, W): one upload per batch
            bare = self._bare(batch, images)
            entries, routing = self._route(batch, bare)
            groups: dict[tuple[int, ShapeKey], list[int]] = {}
            for i, (j, e) in enumerate(zip(batch, entries, strict=True)):
                groups.setdefault((id(j.snapshot), e.shape), []).append(i)
            out: list = [None] * len(batch)
            for (_, shape), idx in groups.items():
                snap = batch[idx[0]].snapshot
                vrows = torch.tensor([entries[i].vision_row for i in idx], device=self.device)
                text_rows = [entries[i].text_row for i in idx]
                trows = torch.tensor(text_rows, device=self.device)
                whole = len(idx) == len(batch)
                at = None if whole else torch.tensor(idx, device=self.device)
                sel = images if whole else images[at]
                prompts = snap.vision_banks[shape].index_select(0, vrows)  # (b, depth, n, Wv)
                t = time.thread_time()
                feats, taps = self.runner.prompted(sel, prompts, snap.banks.lowpass_of(text_rows))
                self.model_cpu_seconds += time.thread_time() - t
                plain = (bare if whole else bare[at]) if snap.banks.needs_bare(text_rows) else None
                rows = self.runner.decide_features(feats, taps, trows, snap.banks, bare=plain,
                                                   review_out_of_scope=self.review_out_of_scope,
                                                   review_margin=self.review_margin).answers(snap.banks)
                for k, i in enumerate(idx):
                    out[i] = build_result(entries[i], rows[k], model=self.model_name, latency_ms=0.0,
                                          routing=routing[i])
        return out

    def _bare(self, batch: list[Job], images: Tensor) -> Tensor | None:
        """(B, E) frozen-tower features where a job needs them (zeros elsewhere), None when none does: the
        jobs sent without a domain (the router reads them) and those whose domain has a zero-shot guard."""
        need = [i for i, j in enumerate(batch) if j.entry is None or j.snapshot.banks.guarded(j.entry.text_row)]
        if not need:
            return None
        t = time.thread_time()
        if len(need) == len(batch):
            bare = self.runner.bare(images)
        else:
            feats = self.runner.bare(images[torch.tensor(need, device=self.device)])
            bare = feats.new_zeros(len(batch), feats.shape[1])
            bare[need] = feats
        self.model_cpu_seconds += time.thread_time() - t
        return bare

    def _route(self, batch: list[Job], bare: Tensor | None) -> tuple[list[DomainEntry], list[dict | None]]:
        """Each job's entry, routing the jobs sent without a domain on their frozen-tower features."""
        entries, routing = [j.entry for j in batch], [None] * len(batch)
        todo = [i for i, e in enumerate(entries) if e is None]
        if not todo:
            return entries, routing
        by_snapshot: dict[int, list[int]] = {}
        for i in todo:
            by_snapshot.setdefault(id(batch[i].snapshot), []).append(i)
        for idx in by_snapshot.values():  # one router call per snapshot (almost always one)
            snap = batch[idx[0]].snapshot
            feats = bare[torch.tensor(idx, device=self.device)]
            for i, r in zip(idx, snap.router.route(feats, list(snap.domains)), strict=True):
                entries[i], routing[i] = snap.domains[r.domain], route_info(r, snap.router.version)
        return entries, routing

    async def warmup(self, snapshot: Snapshot, image_size: int) -> None:
        """One forward per prompt shape and batch size, through the same path as requests.

        With a bucketed runner every bucket is captured now, not on the first unlucky request.
        """
        loop = asyncio.get_running_loop()
        sizes = tuple(getattr(self.runner.encode, "buckets", (1, 2)))
        for entry in {e.shape: e for e in snapshot.domains.values()}.values():
            for b in sizes:
                n = min(b, self.max_batch)
                answers = Answers(n, loop)
                jobs = [Job(torch.zeros(3, image_size, image_size), entry, snapshot, answers, i) for i in range(n)]
                await loop.run_in_executor(self.model_thread, self._forward, jobs)
