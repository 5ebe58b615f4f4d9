"""What the lifespan builds and the routes use, reached through `Annotated` dependencies."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from promptclip import LoadedCLIP, PromptedCLIP
from review import ReviewStore, ReviewWriter

from .decode import ImageDecoder
from .engine import BatchingEngine
from .errors import ApiError
from .metrics import ServiceMetrics
from .registry import BundleRegistry
from .routing import DomainRouting
from .settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    clip: LoadedCLIP | None = None
    prompted: PromptedCLIP | None = None
    registry: BundleRegistry | None = None
    engine: BatchingEngine | None = None
    decoder: ImageDecoder | None = None
    routing: DomainRouting | None = None  # images sent without a domain
    review_store: ReviewStore | None = None  # MODERATION_REVIEW_DB; None when 'off'
    review_writer: ReviewWriter | None = None  # answers for review leave the request path here
    ready: bool = False  # model + bundles loaded and warmed up
    draining: bool = False  # SIGTERM received: /readyz 503, in-flight work finishing
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def model_name(self) -> str:
        return self.clip.info.architecture if self.clip else self.settings.model


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI runs a sync dependency in the thread pool, one AnyIO hop per request
    state: ServiceState = request.app.state.service
    if state.engine is None:
        raise ApiError(503, "not_ready", "the service is starting; retry shortly", {"Retry-After": "1"})
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
