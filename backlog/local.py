"""The local engine (default): one process, decode threads feeding batched model calls, shard by shard."""

from __future__ import annotations

from tqdm import tqdm

from .config import ScoreConfig
from .plan import RunSummary, start_run
from .scorer import Scorer
from .stream import stream_outcomes


def score_local(cfg: ScoreConfig, scorer: Scorer | None = None) -> RunSummary:
    """Score every uncommitted shard of `cfg.input` into `cfg.out`; committed shards are skipped.

    `scorer` may be passed in (already loaded) so that benchmarks time the scoring, not the load.
    """
    plan, result, pending = start_run(cfg)
    if not pending:
        return result.finish()
    scorer = scorer or Scorer(cfg)
    if scorer.version != plan.bundle_version:
        raise RuntimeError(f"{cfg.domain}'s CURRENT bundle changed during the run "
                           f"({plan.bundle_version} -> {scorer.version}); run again")
    items, outcomes, committed = [], [], 0
    with tqdm(total=len(pending), unit="img", desc=f"score {cfg.domain}", disable=not cfg.progress,
              dynamic_ncols=True) as bar:
        for it, out in stream_outcomes(scorer, pending, cfg.batch_size, cfg.decode_workers):
            items.append(it)
            outcomes.append(out)
            result.errors += isinstance(out, str)
            bar.update(1)
            shard = it.index // cfg.shard_size
            if len(items) == len(plan.todo[shard]):  # shards are contiguous and scored in order
                plan.out.commit(shard, scorer.table(items, outcomes))
                result.scored += len(items)
                items, outcomes = [], []
                committed += 1
                bar.set_postfix(shards=f"{result.shards_skipped + committed}/{result.shards}", errors=result.errors,
                                refresh=False)
    return result.finish()
