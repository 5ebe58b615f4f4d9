"""Offline batch scoring of image collections with the service's decisions (DESIGN §12).

    python -m backlog score --input IMAGES --domain photo --out OUT.parquet [--engine local|ray]

Imports `promptclip`, never `service`: every decision comes from `promptclip.decide`. The names
below are imported on first use, so `python -m backlog --help` never loads torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .config import ScoreConfig

if TYPE_CHECKING:
    from .plan import RunSummary

_LAZY = {"compare_tables": "compare", "read_output": "compare", "Item": "inputs", "list_inputs": "inputs",
         "read_bytes": "inputs", "score_local": "local", "RunSummary": "plan", "Scorer": "scorer",
         "output_schema": "scorer"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def score(cfg: ScoreConfig) -> RunSummary:
    """Run `cfg.engine` over `cfg.input` into `cfg.out` (`--domain auto`: route each image first)."""
    if cfg.domain == "auto":
        from .routed import score_routed

        return score_routed(cfg)
    if cfg.engine == "ray":
        from .ray_engine import score_ray  # Ray is an optional extra

        return score_ray(cfg)
    from .local import score_local

    return score_local(cfg)


__all__ = ["Item", "RunSummary", "ScoreConfig", "Scorer", "compare_tables", "list_inputs", "output_schema",
           "read_bytes", "read_output", "score", "score_local"]
