"""Independent training runs at once, one process each.

`fit`, `evaluate` and `curve` train every variant at every training seed (5 trained variants x 3
seeds by default): runs that share their inputs and nothing else. Each run is seeded and runs in
one process with the command's `--threads`, so a run trained here is bit-for-bit the run the serial
loop would train; the serial loop then finds every run finished (`train_variant` reuses a final.pt
whose key matches) and only evaluates. `--jobs` sets how many run at once (0: one per CPU core
the threads leave free; 1: none here, the serial loop trains them).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .train import TRAINED_VARIANTS

if TYPE_CHECKING:
    from .config import EvalConfig, SplitConfig
    from .steps import Context

TRAINED = (*TRAINED_VARIANTS, "random_groups")  # the variants with training runs (zero_shot and prototype have none)


@dataclass(frozen=True)
class RunSpec:
    """One training run: a variant at a training seed on one partition of the tasks, into out_dir."""

    variant: str
    seed: int
    groups: list[list[str]]
    out_dir: Path


def variant_runs(variant: str, tasks: list[str], groups: list[list[str]], seed: int, random_draws: int,
                 run_dir: Path) -> list[RunSpec]:
    """The runs a variant trains at `seed` (random_groups: one per draw, on its random partition)."""
    models = Path(run_dir) / "models"
    if variant == "random_groups":
        from .baselines import random_partition

        return [RunSpec(variant, seed, random_partition(tasks, groups, seed, d), models / f"random_groups-s{seed}-d{d}")
                for d in range(random_draws)]
    return [RunSpec(variant, seed, groups, models / f"{variant}-s{seed}")]


def planned_runs(tasks: list[str], groups: list[list[str]], ecfg: EvalConfig, run_dir: Path,
                 extra_seeds: tuple[int, ...] = ()) -> list[RunSpec]:
    """Every run `evaluate` trains (and group_private at `extra_seeds`, the seed `fit` exports)."""
    runs = [r for seed in ecfg.seeds for v in ecfg.variants if v in TRAINED
            for r in variant_runs(v, tasks, groups, seed, ecfg.random_draws, run_dir)]
    runs += [r for s in extra_seeds if s not in ecfg.seeds
             for r in variant_runs("group_private", tasks, groups, s, 1, run_dir)]
    return runs


def worker_count(jobs: int, threads: int, runs: int) -> int:
    """Processes to train `runs` runs in: `jobs`, or (0) the cores `threads` per run leave room for."""
    if jobs <= 0:
        jobs = max(1, len(os.sched_getaffinity(0)) // max(1, threads))
    return max(1, min(jobs, runs))


def train_runs(ctx: Context, ns: argparse.Namespace, runs: list[RunSpec], jobs: int) -> int:
    """Train the runs without a final.pt in worker processes; returns how many were trained here.
    Nothing happens with one worker or under torchrun (the serial loop trains them)."""
    from tqdm import tqdm

    todo = [r for r in runs if not (r.out_dir / "final.pt").is_file()]
    workers = worker_count(jobs, ctx.model_cfg.threads, len(todo))
    if not todo or workers <= 1 or ctx.dist.world > 1:
        return 0
    import open_clip

    arch = {ns.model: open_clip.get_model_config(ns.model)} if open_clip.get_model_config(ns.model) else {}
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_start_worker,
                             initargs=(ns, ctx.data_dir, ctx.split, arch)) as pool:
        futures = [pool.submit(_train, r) for r in todo]
        for f in tqdm(as_completed(futures), total=len(futures), desc=f"training runs ({workers} at once)",
                      unit="run"):
            f.result()  # a failed run fails the command, with its traceback
    return len(todo)


_WORKER: Context | None = None


def _start_worker(ns: argparse.Namespace, data: Path, split: SplitConfig, arch: dict) -> None:
    """`arch`: the architecture config the parent knows `--model` by (also one registered in-process)."""
    from promptclip.loading import register_config

    from . import train
    from .steps import Context

    train.PROGRESS = False  # one bar, the parent's

    for name, config in arch.items():
        register_config(name, config)

    global _WORKER
    _WORKER = Context(ns, data)
    _WORKER.split = split  # the caller's (curve sets the shots per cell)


def _train(run: RunSpec) -> str:
    from .train import train_variant

    train_variant(_WORKER.run_context.with_train(seed=run.seed), run.variant, run.groups, run.out_dir)
    return str(run.out_dir)
