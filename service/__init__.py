"""FastAPI moderation service: one frozen CLIP, per-domain prompt bundles, micro-batched inference.

`create_app(settings)` builds the app; `python -m service` runs it under uvicorn. The names below
are imported on first use, so `python -m service --help` never loads torch.
"""

from __future__ import annotations

import importlib

_LAZY = {"create_app": "main", "Settings": "settings", "get_settings": "settings"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Settings", "create_app", "get_settings"]
