"""`create_app(settings)`: routers, error handlers, metrics, and the lifespan that loads the model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from PIL import Image

from promptclip import ClipLoadError, ModelSpec, PromptedCLIP, load_clip
from review import OFF, ReviewStore, ReviewWriter

from .decode import ImageDecoder
from .engine import BatchingEngine
from .errors import install_error_handlers
from .hotpath import HOT_ROUTES, HotRoutes
from .metrics import MetricsMiddleware, ServiceMetrics
from .pipeline import LocalBackend
from .registry import BundleRegistry
from .routers import admin, classify, domains, health, metrics, moderations, review
from .settings import Settings, get_settings
from .state import ServiceState

log = logging.getLogger(__name__)


def _store_problem(root: Path) -> str | None:
    """Why this process cannot read the bundle store at all, or None. An empty store is fine (readyz
    stays 503 until a bundle is published); a missing directory or files this user cannot read (the
    container runs as uid 10001; published files can be 0600) are a deployment mistake."""
    if not root.exists():
        return f"{root} does not exist"
    if not root.is_dir():
        return f"{root} is not a directory"
    try:
        unreadable = [] if os.access(root, os.R_OK | os.X_OK) else [root]
        for d in sorted(root.iterdir()) if not unreadable else []:
            if not d.is_dir() or d.name.startswith("."):
                continue
            if not os.access(d, os.R_OK | os.X_OK):
                unreadable.append(d)
                continue
            unreadable += [f for f in sorted(d.iterdir()) if not f.name.startswith(".") and f.is_file()
                           and (f.name == "CURRENT" or f.suffix == ".safetensors") and not os.access(f, os.R_OK)]
    except OSError as e:
        return f"{root} cannot be listed ({e.strerror})"
    if unreadable:
        more = f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
        return (f"uid {os.getuid()} cannot read {', '.join(map(str, unreadable[:3]))}{more} "
                f"(make the store readable: chmod -R a+rX)")
    return None


async def _startup(st: ServiceState) -> None:
    s = st.settings
    problem = await asyncio.to_thread(_store_problem, s.store_dir.resolve())
    if problem:  # one line that says what to fix, before the slow model load
        log.error("cannot read the bundle store (MODERATION_STORE_DIR): %s", problem)
        raise RuntimeError(f"startup failed: bundle store {problem}")
    if s.torch_threads:
        torch.set_num_threads(s.torch_threads)
    spec = ModelSpec(model=s.model, pretrained=s.pretrained, device=s.resolved_device(),
                     precision=s.resolved_precision(), tokenizer=s.tokenizer)
    log.info("loading CLIP model=%s pretrained=%s device=%s precision=%s", spec.model, spec.pretrained,
             spec.device, spec.precision)
    try:
        st.clip = await asyncio.to_thread(load_clip, spec)
    except ClipLoadError as e:  # say what to fix, without a stack trace of our own making
        log.error("cannot load the model: %s", e)
        raise RuntimeError(f"startup failed: {e}") from None
    st.prompted = PromptedCLIP(st.clip.model)
    st.registry = BundleRegistry(st.clip, st.prompted, s.store_dir)
    report = await asyncio.to_thread(st.registry.reload)
    snapshot = st.registry.snapshot
    if not snapshot.domains:
        log.warning("no bundle loaded from %s (refused: %s); /readyz stays 503 until a reload loads one",
                    s.store_dir.resolve(), report.refused)
    device_jpeg = None
    if s.device_jpeg and spec.device.startswith("cuda"):  # nvjpeg + preprocess on the GPU; PIL stays the fallback
        from promptclip import device_jpeg_preprocessor

        device_jpeg = device_jpeg_preprocessor(st.clip.model, spec.device, max_pixels=s.max_image_pixels,
                                               min_side=s.min_image_side)
    st.decoder = ImageDecoder(st.clip.preprocess, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels,
                              min_side=s.min_image_side, workers=s.decode_workers, device_jpeg=device_jpeg,
                              max_pending=s.max_queue + s.decode_workers, timeout_s=s.request_timeout_s,
                              retry_after_s=s.retry_after_s, on_cpu=st.metrics.decode_cpu.inc)
    engine = BatchingEngine(st.prompted, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
                            timeout_s=s.request_timeout_s, retry_after_s=s.retry_after_s, metrics=st.metrics,
                            cuda_graphs=s.cuda_graphs, arriving=lambda: st.decoder.pending,
                            review_out_of_scope=s.review_out_of_scope, review_margin=s.review_margin,
                            model_name=st.model_name)
    engine.start()
    if s.warmup:
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (120, 80, 40)).save(buf, "JPEG")
        await st.decoder.decode(buf.getvalue())
        await engine.warmup(snapshot, st.clip.info.image_size)
    _start_review(st)
    st.engine = engine
    st.backend = LocalBackend(st)
    st.metrics.set_bundles(snapshot)
    st.metrics.reloads.labels("ok" if report.ok else "refused").inc()
    st.ready = True
    st.metrics.ready.set(1)
    log.info("ready: %d domain(s) %s on %s", len(snapshot.domains),
             {d: e.version for d, e in sorted(snapshot.domains.items())}, spec.device)


def _start_review(st: ServiceState) -> None:
    """The review store and its writer thread. Nothing here touches the database: the writer migrates
    the schema on its thread (and retries while the store is down), so a dead store never stops startup."""
    s = st.settings
    if s.review_db == OFF:
        log.info("review queue off (MODERATION_REVIEW_DB=off)")
        return
    st.review_store = ReviewStore(s.review_db, claim_s=s.review_claim_s, retention_days=s.review_retention_days,
                                  undo_s=s.review_undo_s)
    m = st.metrics
    st.review_writer = ReviewWriter(st.review_store, max_queue=s.review_queue,
                                    on_enqueued=lambda reason, n: m.review_enqueued.labels(reason).inc(n),
                                    on_dropped=m.review_dropped.inc, on_pending=m.review_pending.set)
    st.review_writer.start()
    log.info("review queue: %s (audit rate %g)", st.review_store.engine.url.render_as_string(), s.review_audit_rate)


async def _poll_store(st: ServiceState) -> None:
    """Reload when a domain's (or the router's) CURRENT version on disk differs from the one being served."""
    while True:
        await asyncio.sleep(st.settings.poll_interval_s)
        try:
            on_disk = await asyncio.to_thread(st.registry.signature)
            serving = st.registry.serving()
            if any(serving.get(d) != v for d, v in on_disk.items()):
                await admin.reload_store(st)
        except Exception:
            log.exception("store poll failed; will retry")


async def _shutdown(st: ServiceState) -> None:
    st.draining, st.ready = True, False
    st.metrics.ready.set(0)
    if st.engine is not None:
        drained = await st.engine.drain(st.settings.drain_timeout_s)
        log.info("drained in-flight requests: %s", "all answered" if drained else "timed out")
        await st.engine.stop()
    if st.decoder is not None:
        st.decoder.close()
    if st.review_writer is not None:  # answers already given still reach the store
        await asyncio.to_thread(st.review_writer.stop)
        st.review_store.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the moderation app. Nothing heavy happens until the lifespan starts."""
    settings = settings or get_settings()
    state = ServiceState(settings=settings, metrics=ServiceMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _startup(state)
        poller = asyncio.create_task(_poll_store(state)) if settings.poll_interval_s > 0 else None
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await _shutdown(state)

    app = FastAPI(
        title="Content moderation API",
        version="0.1.0",
        description="One frozen CLIP, adapted per image domain by deep-prompt bundles. Every error is "
                    '`{"error": {"code", "message"}}`.',
        lifespan=lifespan,
    )
    app.state.service = state
    app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app)
    from .docs import install_docs  # /docs and /redoc with local assets (no CDN)

    install_docs(app)
    for r in (classify.router, moderations.router, domains.router, admin.router, health.router, metrics.router,
              review.router):
        app.include_router(r)
    app.add_middleware(HotRoutes, state=state, routes=HOT_ROUTES)  # inside the metrics middleware
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
