"""Offline batch scoring of image collections with the service's decisions (DESIGN §12).

    python -m backlog score --input IMAGES --domain photo --out OUT.parquet [--engine local|ray]

Imports `promptclip`, never `service`: every decision comes from `promptclip.decide`.
"""

from .compare import compare_tables, read_output
from .config import ScoreConfig
from .inputs import Item, list_inputs, read_bytes
from .local import score_local
from .plan import RunSummary
from .scorer import Scorer, output_schema


def score(cfg: ScoreConfig) -> RunSummary:
    """Run `cfg.engine` over `cfg.input` into `cfg.out`."""
    if cfg.engine == "ray":
        from .ray_engine import score_ray  # Ray is an optional extra

        return score_ray(cfg)
    return score_local(cfg)


__all__ = ["Item", "RunSummary", "ScoreConfig", "Scorer", "compare_tables", "list_inputs", "output_schema",
           "read_bytes", "read_output", "score", "score_local"]
