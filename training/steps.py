"""The steps the commands share (`fit` runs them all, `curve` groups and evaluates): CLIP and data loaded
once per command (Context), then group, train, evaluate, export and publish the router. torch, CLIP and
the training code load when a step first needs them, not at import."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_options import read_config
from .config import (
    DecisionConfig,
    EvalConfig,
    GroupConfig,
    ModelConfig,
    PromptSizes,
    SplitConfig,
    TrainConfig,
    to_dict,
)
from .router_config import RouterConfig


class Context:
    """Loaded once per command: CLIP, data with splits, image cache."""

    def __init__(self, ns: argparse.Namespace, data: Path, dist=None):
        from .data import ImageCache, load_tasks
        from .runtime import init_distributed, load_encoder, setup_determinism

        self.model_cfg = read_config(ns, ModelConfig)
        setup_determinism(self.model_cfg.threads)
        self.dist = dist or init_distributed(self.model_cfg.device)
        self.split = read_config(ns, SplitConfig)
        self.sizes = read_config(ns, PromptSizes)
        self.train = read_config(ns, TrainConfig)
        self.tokenizer = getattr(ns, "tokenizer", None)
        self.clip, self.encoder = load_encoder(self.model_cfg, self.dist, self.tokenizer)
        self.data = load_tasks(data, self.split.split_seed, self.split.test_frac, self.split.val_per_class,
                               getattr(ns, "domains", None), self.split.val_frac)
        self.cache = ImageCache(self.clip.preprocess)
        self.data_dir = Path(data)

    def run_info(self) -> dict:
        """RUN/run.json: the data, model and recipe a run was made with."""
        return {"data": str(self.data_dir.resolve()), "model": to_dict(self.model_cfg), "tokenizer": self.tokenizer,
                "split": to_dict(self.split),
                "prompt": to_dict(self.sizes), "train": to_dict(self.train), "tasks": self.data.tasks}

    def save_run_json(self, run: Path) -> None:
        run.mkdir(parents=True, exist_ok=True)
        (run / "run.json").write_text(json.dumps(self.run_info(), indent=1) + "\n")

    @property
    def run_context(self):
        """The one object the training functions take (training.runtime.RunContext)."""
        from .runtime import RunContext

        return RunContext(self.clip, self.encoder, self.data, self.cache, self.sizes, self.train, self.split,
                          self.dist)


def do_group(ctx: Context, ns, run: Path) -> dict:
    from .grouping import group_tasks

    gcfg = read_config(ns, GroupConfig, prefix="group_")
    ctx.save_run_json(run)
    return group_tasks(ctx.run_context, gcfg, run)


def read_groups(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `python -m training group` first")
    return json.loads(path.read_text())["groups"]


def do_train(ctx: Context, run: Path, groups, variant="group_private", resume=False, stop_after=0):
    from .train import train_variant

    if ctx.dist.is_main:
        ctx.save_run_json(run)
    out = run / "models" / f"{variant}-s{ctx.train.seed}"
    model = train_variant(ctx.run_context, variant, groups, out, resume=resume, stop_after=stop_after,
                          reuse=not resume)
    return out, model


def do_evaluate(ctx: Context, ns, run: Path, groups, ecfg: EvalConfig | None = None) -> dict:
    from .evaluate import evaluate

    ecfg = ecfg or read_config(ns, EvalConfig)
    train_all(ctx, ns, run, groups, ecfg)
    return evaluate(ctx.run_context, groups, ecfg, run)


def train_all(ctx: Context, ns, run: Path, groups, ecfg: EvalConfig, extra_seeds: tuple[int, ...] = ()) -> int:
    """Every run the evaluation trains (and group_private at `extra_seeds`), `--jobs` at once
    (training.parallel); the serial steps after it reuse them."""
    from .parallel import planned_runs, train_runs

    return train_runs(ctx, ns, planned_runs(ctx.data.tasks, groups, ecfg, run, extra_seeds), ecfg.jobs)


def do_export(ctx: Context, ns, run: Path, store: Path, seed: int) -> dict:
    from .export import export_run, write_json

    final = run / "models" / f"group_private-s{seed}" / "final.pt"
    if not final.is_file():
        raise FileNotFoundError(f"{final} does not exist; run `python -m training train` with --seed {seed}")
    out = export_run(ctx.clip, ctx.encoder, ctx.data, ctx.cache, final, store, read_config(ns, DecisionConfig),
                     ctx.split.shots, ns.version, ns.created_at, report_dir=run)
    write_json(run / "export.json", out)
    return out


def do_router(ctx: Context, ns, store: Path, groups: list[list[str]] | None, created: str = "") -> dict | None:
    from .router import publish_router

    if not ctx.dist.is_main or len(ctx.data.tasks) < 2:
        return None  # one domain needs no router
    return publish_router(ctx.clip, ctx.cache, ctx.data, store, read_config(ns, RouterConfig), groups=groups,
                          created=created)
