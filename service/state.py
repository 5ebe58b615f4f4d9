"""What the lifespan builds and the routes use, reached through `Annotated` dependencies.

Torch-free at import: a front-end process (service.frontend) holds a ServiceState whose
`backend` is the engine process's client, and none of the model's parts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, Request

from .errors import ApiError
from .metrics import ServiceMetrics
from .settings import Settings

if TYPE_CHECKING:
    from promptclip import LoadedCLIP, PromptedCLIP
    from review import ReviewStore, ReviewWriter

    from .decode import ImageDecoder
    from .engine import BatchingEngine
    from .items import Item
    from .registry import BundleRegistry


class Backend(Protocol):
    """Where the hot routes send their images: the engine in this process (service.pipeline.LocalBackend)
    or the engine process (service.ipc.EngineClient)."""

    def view(self) -> Any:
        """The served domains now (service.items: `domains`, `known()`, `routable`)."""

    async def classify(self, view: Any, items: list[Item], t0: float, render: str | None = None) -> list[Any]:
        """Per item its answer (a dict; `render` 'moderation': OpenAI's result) or the ApiError it failed with."""


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    clip: LoadedCLIP | None = None
    prompted: PromptedCLIP | None = None
    registry: BundleRegistry | None = None
    engine: BatchingEngine | None = None
    decoder: ImageDecoder | None = None
    review_store: ReviewStore | None = None  # MODERATION_REVIEW_DB; None when 'off'
    review_writer: ReviewWriter | None = None  # answers for review leave the request path here
    backend: Backend | None = None  # set once the engine can take requests
    ready: bool = False  # model + bundles loaded and warmed up
    draining: bool = False  # SIGTERM received: /readyz 503, in-flight work finishing
    siblings_ready: Callable[[], bool] = lambda: True  # a front end: are all the front ends ready?
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def model_name(self) -> str:
        return self.clip.info.architecture if self.clip else self.settings.model


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI runs a sync dependency in the thread pool, one AnyIO hop per request
    state: ServiceState = request.app.state.service
    if state.backend is None:
        raise ApiError(503, "not_ready", "the service is starting; retry shortly", {"Retry-After": "1"})
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
