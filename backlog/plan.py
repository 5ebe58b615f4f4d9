"""What a run has to do: list the input, pin the run in OUT/, and find the shards not yet committed.

Both engines start here, so they list, shard and resume identically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from promptclip import PromptStore, read_manifest

from .config import ScoreConfig
from .inputs import Item, fingerprint, list_inputs, shards
from .output import OutputDir

log = logging.getLogger(__name__)


@dataclass
class Plan:
    cfg: ScoreConfig
    items: list[Item]  # the whole listing
    out: OutputDir
    todo: dict[int, list[Item]]  # shard -> its items, for shards not committed yet
    bundle_version: str
    labels: list[str]  # the bundle's label names, in bundle order (the per-label output columns)

    def pending(self) -> list[Item]:
        """Items of uncommitted shards, in listing order."""
        return [it for s in sorted(self.todo) for it in self.todo[s]]


@dataclass
class RunSummary:
    """What a run did; the CLI prints it as one JSON line."""

    engine: str
    out: str
    images: int  # in the whole listing
    shards: int  # in the whole listing
    shards_skipped: int  # already committed by an earlier run
    scored: int = 0  # images scored by this run
    errors: int = 0  # of those, error rows
    seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter, repr=False)

    def finish(self) -> RunSummary:
        self.seconds = round(time.perf_counter() - self.started, 3)
        return self

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "started"}
        d["images_per_s"] = round(self.scored / self.seconds, 2) if self.seconds else None
        return d


def make_plan(cfg: ScoreConfig) -> Plan:
    """List the input and open OUT/ for this run (ValueError, saying what to change, if OUT/ disagrees)."""
    store = PromptStore(cfg.store)
    version = store.current_version(cfg.domain)
    if version is None:
        raise ValueError(f"no bundle for domain {cfg.domain!r} in store {cfg.store}; "
                         f"domains there: {store.domains()}")
    manifest = read_manifest(store.path(cfg.domain, version))
    items = list_inputs(cfg.input, image_column=cfg.image_column, id_column=cfg.id_column)
    out = OutputDir(cfg.out)
    out.prepare({"input": str(cfg.input), "fingerprint": fingerprint(items), "items": len(items),
                 "shard_size": cfg.shard_size, "domain": cfg.domain, "bundle_version": version,
                 "bundle_sha256": manifest["sha256"], "model": cfg.model, "pretrained": cfg.pretrained,
                 "review_out_of_scope": cfg.review_out_of_scope})
    done = out.done()
    todo = {s: its for s, its in shards(items, cfg.shard_size).items() if s not in done}
    return Plan(cfg, items, out, todo, version, [lab["name"] for lab in manifest["labels"]])


def summary(plan: Plan) -> RunSummary:
    n_shards = -(-len(plan.items) // plan.cfg.shard_size)
    return RunSummary(plan.cfg.engine, str(plan.out.path), len(plan.items), n_shards, n_shards - len(plan.todo))


def start_run(cfg: ScoreConfig) -> tuple[Plan, RunSummary, list[Item]]:
    """What every engine does first: the plan, its summary, and the items still to score (logged when none)."""
    plan = make_plan(cfg)
    result = summary(plan)
    pending = plan.pending()
    if not pending:
        log.info("%s: all %d shards already committed; nothing to score", cfg.out, result.shards)
    return plan, result, pending
