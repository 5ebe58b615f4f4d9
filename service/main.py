"""`create_app(settings)`: routers, error handlers, metrics, and the lifespan that loads the model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from PIL import Image

from promptclip import ClipLoadError, ModelSpec, PromptedCLIP, load_clip

from .decode import ImageDecoder
from .engine import BatchingEngine
from .errors import install_error_handlers
from .metrics import MetricsMiddleware, ServiceMetrics
from .registry import BundleRegistry
from .routers import admin, classify, domains, health, metrics
from .settings import Settings, get_settings
from .state import ServiceState

log = logging.getLogger(__name__)


async def _startup(st: ServiceState) -> None:
    s = st.settings
    if s.torch_threads:
        torch.set_num_threads(s.torch_threads)
    spec = ModelSpec(model=s.model, pretrained=s.pretrained, device=s.resolved_device(),
                     precision=s.resolved_precision())
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
    if spec.device.startswith("cuda"):  # nvjpeg decode + preprocess on the GPU; PIL stays the fallback
        from promptclip.accel import device_jpeg_preprocessor

        device_jpeg = device_jpeg_preprocessor(st.clip.model, spec.device, max_pixels=s.max_image_pixels,
                                               min_side=s.min_image_side)
    st.decoder = ImageDecoder(st.clip.preprocess, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels,
                              min_side=s.min_image_side, workers=s.decode_workers, device_jpeg=device_jpeg,
                              max_pending=s.max_queue + s.decode_workers, timeout_s=s.request_timeout_s,
                              retry_after_s=s.retry_after_s)
    engine = BatchingEngine(st.prompted, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
                            timeout_s=s.request_timeout_s, retry_after_s=s.retry_after_s, metrics=st.metrics,
                            cuda_graphs=s.cuda_graphs, arriving=lambda: st.decoder.pending)
    engine.start()
    if s.warmup:
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (120, 80, 40)).save(buf, "JPEG")
        await st.decoder.decode(buf.getvalue())
        await engine.warmup(snapshot, st.clip.info.image_size)
    st.engine = engine
    st.metrics.set_bundles(snapshot)
    st.metrics.reloads.labels("ok" if report.ok else "refused").inc()
    st.ready = True
    st.metrics.ready.set(1)
    log.info("ready: %d domain(s) %s on %s", len(snapshot.domains),
             {d: e.version for d, e in sorted(snapshot.domains.items())}, spec.device)


async def _poll_store(st: ServiceState) -> None:
    """Reload when a domain's CURRENT version on disk differs from the one being served."""
    while True:
        await asyncio.sleep(st.settings.poll_interval_s)
        try:
            on_disk = await asyncio.to_thread(st.registry.signature)
            serving = {d: e.version for d, e in st.registry.snapshot.domains.items()}
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
    for r in (classify.router, domains.router, admin.router, health.router, metrics.router):
        app.include_router(r)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
