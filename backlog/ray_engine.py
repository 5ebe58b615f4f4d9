"""The Ray Data engine: the same listing and scorer, spread over an actor pool on one node or a cluster.

Pipeline: the uncommitted items of the listing (`ray.data.from_items`: references, never image
bytes) -> `map_batches(RayScorer)`: each actor loads the frozen CLIP and the bundle once and runs
the local engine's own loop (`stream_outcomes`: read, decode, batch, score) over every batch it
is handed -> `write_parquet` into OUT/_ray_staging/shard=N/ -> each shard committed as
OUT/shard-NNNNN.parquet, exactly the files the local engine writes.

Reading through the shared listing rather than `read_images`: Ray's image reader decodes and
resizes its own way (no EXIF orientation, no CMYK / palette handling, a bad file fails the
dataset), so its pixels, hence its decisions, would differ from the service's.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import ScoreConfig
from .inputs import Item
from .plan import Plan, RunSummary, start_run
from .scorer import Scorer, output_schema
from .stream import stream_outcomes

log = logging.getLogger(__name__)

CHUNKS_PER_RAY_BATCH = 8  # a Ray batch is this many model batches, so decode overlaps the model inside an actor
STAGING = "_ray_staging"


class RayScorer:
    """A Ray Data actor: CLIP and the bundle loaded once per actor; one output table per batch."""

    def __init__(self, cfg: ScoreConfig):
        self.cfg = cfg
        self.scorer = Scorer(cfg)  # device "auto": the actor's GPU when Ray gave it one

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        items = [Item(int(i), str(d), str(p), int(g), int(r), str(c)) for i, d, p, g, r, c in zip(
            batch["index"], batch["id"], batch["path"], batch["row_group"], batch["row"], batch["column"], strict=True)]
        done = list(stream_outcomes(self.scorer, items, self.cfg.batch_size, self.cfg.decode_workers))
        table = self.scorer.table([it for it, _ in done], [out for _, out in done])
        shard = pa.array([it.index // self.cfg.shard_size for it, _ in done], pa.int64())
        return table.append_column("shard", shard)


def init_ray(address: str | None):
    """Join `address` (or RAY_ADDRESS), else start a local instance; no-op when Ray is already up."""
    try:
        import ray
    except ImportError:
        raise SystemExit('the Ray engine needs Ray: pip install -e ".[ray]"') from None
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    return ray


def actor_resources(ray, cfg: ScoreConfig) -> dict:
    """compute (the actor pool), num_cpus, num_gpus for map_batches: one actor per GPU when the cluster has GPUs."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    size = cfg.ray_concurrency or (gpus if gpus else max(1, int(res.get("CPU", 1) // cfg.ray_cpus_per_actor)))
    return {"compute": ray.data.ActorPoolStrategy(size=size), "num_cpus": cfg.ray_cpus_per_actor,
            **({"num_gpus": 1} if gpus else {})}


def commit_staged(plan: Plan, staging: Path) -> int:
    """Move each staged shard into OUT/ as one shard file; returns the number of error rows."""
    schema = output_schema(plan.labels)
    errors = 0
    for shard, items in sorted(plan.todo.items()):
        table = pq.read_table(staging / f"shard={shard}").select(schema.names).cast(schema)
        if table.num_rows != len(items):
            raise RuntimeError(f"Ray wrote {table.num_rows} rows for shard {shard}, expected {len(items)}")
        errors += table.num_rows - table.column("error").null_count
        plan.out.commit(shard, table)
    shutil.rmtree(staging)
    return errors


def score_ray(cfg: ScoreConfig) -> RunSummary:
    """Score every uncommitted shard on Ray; a rerun after an interruption skips committed shards."""
    plan, result, pending = start_run(cfg)
    if not pending:
        return result.finish()
    ray = init_ray(cfg.ray_address)
    ray.data.DataContext.get_current().enable_progress_bars = cfg.progress
    staging = plan.out.path / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # an interrupted Ray run's partial output
    resources = actor_resources(ray, cfg)
    log.info("ray: %d images in %d shards; %d actors, %s CPU and %s GPU each", len(pending), len(plan.todo),
             resources["compute"].max_size, resources["num_cpus"], resources.get("num_gpus", 0))
    ds = ray.data.from_items([asdict(it) for it in pending])
    ds = ds.map_batches(RayScorer, fn_constructor_args=(cfg,), batch_size=cfg.batch_size * CHUNKS_PER_RAY_BATCH,
                        batch_format="numpy", **resources)
    ds.write_parquet(str(staging), partition_cols=["shard"])
    result.errors = commit_staged(plan, staging)
    result.scored = len(pending)
    return result.finish()
