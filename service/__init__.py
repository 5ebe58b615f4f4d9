"""FastAPI moderation service: one frozen CLIP, per-domain prompt bundles, micro-batched inference.

`create_app(settings)` builds the app; `python -m service` runs it under uvicorn.
"""

from .main import create_app
from .settings import Settings, get_settings

__all__ = ["Settings", "create_app", "get_settings"]
