"""Prometheus metrics, on a registry per app (tests build many apps in one process)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .registry import Snapshot

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DEPTH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("moderation_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.errors = Counter("moderation_errors", "Error responses (and failed batch items) by route and code",
                              ["route", "status", "code"], registry=r)
        self.latency = Histogram("moderation_http_request_duration_seconds", "HTTP latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("moderation_images", "Images classified, by domain", ["domain"], registry=r)
        self.flagged = Counter("moderation_flagged", "Images flagged (any unsafe label over threshold), by domain",
                               ["domain"], registry=r)
        self.decisions = Counter("moderation_decisions", "Decisions by domain: flagged, needs_review, out_of_scope, "
                                 "routed, routed_low_confidence", ["domain", "decision"], registry=r)
        self.batch_size = Histogram("moderation_batch_size", "Images per model forward pass",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Histogram("moderation_queue_depth", "Images left waiting when a batch was formed",
                                     buckets=DEPTH_BUCKETS, registry=r)
        self.inference_seconds = Histogram("moderation_inference_seconds", "Model time per batch",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.bundle = Gauge("moderation_bundle_loaded", "1 for each bundle version being served",
                            ["domain", "version", "sha256"], registry=r, multiprocess_mode="livemax")
        self.bundle_generation = Gauge("moderation_bundle_generation", "Snapshot generation", registry=r, multiprocess_mode="livemax")
        self.reloads = Counter("moderation_reloads", "Store reloads by outcome", ["outcome"], registry=r)
        self.ready = Gauge("moderation_ready", "1 when /readyz answers 200", registry=r, multiprocess_mode="livemax")
        self.model_cpu = Counter("moderation_model_cpu_seconds", "CPU time of the image tower's forward passes "
                                 "(CPU serving: where the cores go)", registry=r)
        self.decode_cpu = Counter("moderation_decode_cpu_seconds", "CPU time of image decode and preprocess",
                                  registry=r)
        self.review_enqueued = Counter("moderation_review_enqueued", "Answers written to the review queue, by reason",
                                       ["reason"], registry=r)
        self.review_dropped = Counter("moderation_review_dropped", "Answers for review that were not queued (queue "
                                      "full or review store down)", registry=r)
        self.review_pending = Gauge("moderation_review_pending", "Review items without a verdict (all domains)",
                                    registry=r, multiprocess_mode="livemax")

    def observe_answers(self, answers: list[dict]) -> None:
        """Images and decisions of one micro-batch, counted once per (domain, decision) it holds."""
        counts: dict[tuple[str, str], int] = {}
        for a in answers:
            routing = a.get("routing")
            seen = ("images", a["flagged"] and "flagged", a["needs_review"] and "needs_review",
                    a["out_of_scope"] and "out_of_scope", routing is not None and "routed",
                    bool(routing and routing["low_confidence"]) and "routed_low_confidence")
            for name in seen:
                if name:
                    counts[a["domain"], name] = counts.get((a["domain"], name), 0) + 1
        for (domain, name), n in counts.items():
            if name == "images":
                self.images.labels(domain).inc(n)
                continue
            if name == "flagged":
                self.flagged.labels(domain).inc(n)
            self.decisions.labels(domain, name).inc(n)

    def observe_batch(self, size: int, depth: int) -> None:
        self.batch_size.observe(size)
        self.queue_depth.observe(depth)

    def set_bundles(self, snapshot: Snapshot) -> None:
        for labels in list(self.bundle._metrics):  # zero first: with several processes the old series persist
            self.bundle.labels(*labels).set(0)
        self.bundle.clear()
        for e in snapshot.domains.values():
            self.bundle.labels(e.domain, e.version, e.sha256[:16]).set(1)
        self.bundle_generation.set(snapshot.generation)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by route template (bounded cardinality)."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("proxied"):  # proxied: the front end counted it
            return await self.app(scope, receive, send)
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            code = status["code"]
            m = self.metrics
            m.requests.labels(name, scope.get("method", ""), str(code)).inc()
            m.latency.labels(name).observe(time.perf_counter() - t0)
            if code >= 400:
                state = scope.get("state") or {}
                m.errors.labels(name, str(code), state.get("error_code", "http_error")).inc()
