"""Train prompt bundles for your image domains and publish them into a bundle store.

Data is one folder per domain, one sub-folder per label: DATA/<domain>/<label>/<image>, with an
optional DATA/<domain>/labels.json for prompts and unsafe flags. The usual run is one command:

  python -m training fit --data DATA --out RUN --store STORE

(group, train, evaluate and export in one go), then serve STORE with MODERATION_STORE_DIR=STORE
python -m service. Each command's --help lists the options an operator sets first; the groups
marked "advanced" are research knobs whose defaults are tuned.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from .config import (
    DecisionConfig,
    EvalConfig,
    ExportConfig,
    GroupConfig,
    ModelConfig,
    PretrainConfig,
    PromptSizes,
    SplitConfig,
    SynthConfig,
    TrainConfig,
    to_dict,
)
from .router_config import RouterConfig

log = logging.getLogger("training")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show an option's default unless it is None or the help text already says it; keep paragraphs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


# Config fields an operator sets, shown in the first group; every other field is a research knob.
OPERATOR_FIELDS = {"model", "pretrained", "device", "threads", "seed", "seeds", "per_class", "size", "shots",
                   "val_frac", "max_false_flag", "review_target", "review_budget", "scope_keep", "allow_unflaggable",
                   "version", "router_version", "min_confidence"}
# Advanced group titles per config dataclass.
ADVANCED = {"SplitConfig": "data splits", "PromptSizes": "prompt sizes", "TrainConfig": "training recipe",
            "GroupConfig": "task grouping", "EvalConfig": "evaluation", "DecisionConfig": "decision rule",
            "ExportConfig": "export", "RouterConfig": "domain router", "PretrainConfig": "tiny CLIP pretraining"}
# Operator-facing help for fields whose config help speaks to developers, or that other configs add later.
HELP = {"allow_unflaggable": "publish even when a domain with unsafe labels cannot flag at all (its calibration "
                             "data cannot support the targets); without it, export exits non-zero"}


def operator_group(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The parser's first group ("options", beside --help): data, output, store, model, device, targets, seeds."""
    return p._optionals


def add_config(p: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """One option per field of `cls`: operator fields in the first group, the others in an advanced group."""
    advanced = None
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name in OPERATOR_FIELDS:
            g = operator_group(p)
        else:
            advanced = advanced or p.add_argument_group(f"advanced: {ADVANCED.get(cls.__name__, cls.__name__)}")
            g = advanced
        default = f.default if f.default is not MISSING else f.default_factory()
        name = "--" + (prefix + f.name).replace("_", "-")
        kw = {"default": default, "help": HELP.get(f.name) or f.metadata.get("help", ""), "dest": prefix + f.name}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kw.update(nargs=f.metadata.get("nargs", "+"), type=f.metadata.get("type", str))
        else:
            kw["type"] = type(default)
        g.add_argument(name, **kw)


def int_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (an option's type; values may also be given space-separated)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from e


def read_config(ns: argparse.Namespace, cls, prefix: str = "", **override):
    vals = {f.name: getattr(ns, prefix + f.name) for f in fields(cls) if hasattr(ns, prefix + f.name)}
    vals.update(override)
    return cls(**vals)


RECALIBRATE = "training.recalibrate"  # add_arguments(parser), run(args) -> int; absent: no recalibrate command


def _recalibrate_module():
    """training.recalibrate when it is installed (it imports no torch at import), else None."""
    if importlib.util.find_spec(RECALIBRATE) is None:
        return None
    return importlib.import_module(RECALIBRATE)


def build_parser() -> argparse.ArgumentParser:
    fmt = DefaultsFormatter
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=fmt)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks for input errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str = "", usage: str | None = None):
        text = f"{summary[0].upper()}{summary[1:]}."
        return sub.add_parser(name, help=summary, description=f"{text}\n\n{description}" if description else text,
                              formatter_class=fmt, usage=usage and f"%(prog)s {usage} [options]")

    def data_args(s, required=True):
        s.add_argument("--data", required=required, type=Path, default=None,
                       help="DATA directory: DATA/<domain>/<label>/<image> (one folder per domain)")
        s.add_argument("--domains", nargs="+", default=None, help="only these domains (default: every folder of DATA)")

    def model_args(s):
        add_config(s, ModelConfig)
        s.add_argument("--tokenizer", default=None, help="local Hugging Face tokenizer directory, for towers whose "
                                                         "tokenizer open_clip downloads (SigLIP); needs the [hf] extra")

    def recipe(s):
        add_config(s, SplitConfig)
        add_config(s, PromptSizes)
        add_config(s, TrainConfig)

    s = command("fit", "group, train, evaluate and export in one go",
                "The usual command: writes RUN/groups.json, RUN/report.md, RUN/decisions.md and publishes one\n"
                "bundle per domain (and the domain router) into STORE. Set the decision targets here.",
                usage="--data DATA --out RUN --store STORE")
    data_args(s)
    s.add_argument("--out", required=True, type=Path, help="RUN directory (reports, checkpoints)")
    s.add_argument("--store", required=True, type=Path, help="bundle store to publish into")
    model_args(s)
    recipe(s)
    add_config(s, GroupConfig, prefix="group_")
    add_config(s, EvalConfig)
    add_config(s, ExportConfig, skip=("seed",))
    add_config(s, DecisionConfig)
    s.add_argument("--no-router", action="store_true", help="do not fit and publish the domain router")
    add_config(s, RouterConfig)

    s = command("curve", "accuracy against shots per label on fresh synthetic worlds",
                "For each world seed, writes the world, then groups and evaluates it at each shots level\n"
                "(every variant of evaluate's report, plus the zero-shot guard). Writes OUT/curve.json,\n"
                "OUT/curve.md and OUT/shots_curve.png. A rerun skips the (world, shots) cells already done.",
                usage="--out OUT --seeds S1,S2,S3")
    s.add_argument("--out", type=Path, default=Path("runs/curve"), help="output directory (worlds, runs, results)")
    s.add_argument("--seeds", required=True, nargs="+", type=int_list, help="world seeds, e.g. 101,202,303")
    s.add_argument("--shots", nargs="+", type=int_list, default=[[1, 2, 4, 8, 16]],
                   help="shots per label per domain, e.g. 1,2,4,8,16 (default: 1,2,4,8,16)")
    s.add_argument("--train-seeds", nargs="+", type=int, default=EvalConfig().seeds,
                   help="training seeds per cell (the evaluation's --seeds)")
    s.add_argument("--domains", nargs="+", default=None, help="only these domains (default: every domain)")
    s.add_argument("--report-only", action="store_true",
                   help="write the results of the cells already finished; run nothing")
    model_args(s)
    add_config(s, SynthConfig, skip=("seed",))
    add_config(s, SplitConfig, skip=("shots",))
    add_config(s, PromptSizes)
    add_config(s, TrainConfig)
    add_config(s, GroupConfig, prefix="group_")
    add_config(s, EvalConfig, skip=("seeds",))

    s = command("synth", "write the synthetic multi-domain data set",
                "Writes DATA/<domain>/<label>/*.png and DATA/planted_groups.json; a seed gives the same images on "
                "every release.")
    s.add_argument("--out", required=True, type=Path, help="output DATA directory")
    add_config(s, SynthConfig)

    s = command("group", "group the domains by gradient similarity",
                "Writes RUN/similarity.json, RUN/groups.json and RUN/similarity.png.",
                usage="--data DATA --out RUN")
    data_args(s)
    s.add_argument("--out", required=True, type=Path, help="RUN directory")
    model_args(s)
    recipe(s)
    add_config(s, GroupConfig, prefix="group_")

    s = command("train", "train the group-shared and private prompts",
                "Writes RUN/models/<variant>-s<seed>/ with checkpoints; --resume continues an interrupted run.",
                usage="--data DATA --groups RUN/groups.json --out RUN")
    data_args(s)
    s.add_argument("--groups", required=True, type=Path, help="groups.json written by `group`")
    s.add_argument("--out", required=True, type=Path, help="RUN directory")
    s.add_argument("--resume", action="store_true", help="continue from RUN's last checkpoint")
    model_args(s)
    recipe(s)
    g = s.add_argument_group("advanced: run control")
    g.add_argument("--variant", default="group_private", help="which variant to train (the rows of evaluate's report)")
    g.add_argument("--stop-after", type=int, default=0, help="stop after this many epochs (0: run to the end)")

    s = command("evaluate", "compare the trained prompts with baselines on the test split",
                "Writes RUN/report.json and RUN/report.md (accuracy per domain, several seeds, 95% intervals).",
                usage="--data DATA --run RUN")
    data_args(s)
    s.add_argument("--run", required=True, type=Path, help="RUN directory (reads RUN/groups.json)")
    model_args(s)
    recipe(s)
    add_config(s, EvalConfig)

    s = command("export", "fit each domain's decision rule and publish one bundle per domain",
                "Publishes into STORE (new version, CURRENT updated) and writes RUN/decisions.md. Set the\n"
                "decision targets here.",
                usage="--run RUN --store STORE")
    s.add_argument("--run", required=True, type=Path, help="RUN directory written by train")
    s.add_argument("--store", required=True, type=Path, help="bundle store to publish into")
    s.add_argument("--data", type=Path, default=None, help="DATA directory (default: the one RUN was trained on)")
    s.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the one RUN was trained with)")
    add_config(s, ExportConfig)
    add_config(s, DecisionConfig)

    s = command("rollback", "point a domain's CURRENT at an older version",
                "The service picks it up on /admin/reload or its next poll.")
    s.add_argument("--store", required=True, type=Path, help="bundle store")
    s.add_argument("--domain", required=True, help="a domain of the store")
    s.add_argument("--version", required=True, help="version to make current, e.g. v0001")

    s = command("router", "fit the domain router and publish it into a store",
                "The router picks a domain for images sent without one (STORE/_router/).",
                usage="--data DATA --store STORE")
    data_args(s)
    s.add_argument("--store", required=True, type=Path, help="bundle store (writes STORE/_router/)")
    model_args(s)
    add_config(s, SplitConfig)
    add_config(s, RouterConfig)
    g = s.add_argument_group("advanced: reproducible builds")
    g.add_argument("--created-at", default="", help="manifest created_at (empty: now)")

    s = command("label", "add or remove a label of a published domain without retraining")
    lab = s.add_subparsers(dest="label_command", required=True, metavar="ACTION")
    for name, what in (("add", "publish the next version with one more (uncalibrated) label"),
                       ("remove", "publish the next version without a label")):
        t = lab.add_parser(name, help=what, description=what, formatter_class=fmt)
        t.add_argument("--store", required=True, type=Path, help="bundle store")
        t.add_argument("--domain", required=True, help="domain whose CURRENT bundle is edited")
        t.add_argument("--name", required=True, help="label name, e.g. star")
        if name == "add":
            t.add_argument("--prompt", required=True, help="text fed to CLIP, e.g. 'a photo of a star.'")
            t.add_argument("--unsafe", action="store_true", help="flagging this label is a moderation hit")
            t.add_argument("--threshold", type=float, default=0.5, help="probability at or above which it flags")
            t.add_argument("--openai-category", default=None, help="OpenAI moderation category it also reports")

    recal = _recalibrate_module()
    if recal is not None:
        s = command("recalibrate", "refit a domain's decision rule with reviewers' verdicts and publish it")
        recal.add_arguments(s)

    s = command("pretrain-tiny", "pretrain the embedded tiny CLIP on a captioned synthetic corpus",
                "Rewrites promptclip/embedded/tiny-clip.safetensors (the shipped demo model).")
    s.add_argument("--threads", type=int, default=ModelConfig.threads, help="torch CPU threads")
    add_config(s, PretrainConfig)

    s = command("demo", "rebuild the embedded tiny CLIP and the demo bundles from seeds",
                "Replaces the demo domains of STORE; the same software versions give the same files.")
    s.add_argument("--work", type=Path, default=Path("runs/demo"), help="scratch directory (data, run)")
    s.add_argument("--store", type=Path, default=Path("prompts_store"), help="store whose domains are replaced")
    s.add_argument("--skip-pretrain", action="store_true", help="reuse the embedded tiny CLIP as it is")
    s.add_argument("--created-at", default="2026-01-01T00:00:00+00:00", help="fixed manifest timestamp")
    return p


# ------------------------------------------------------------------------------------------ steps
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


def cmd_synth(ns) -> int:
    from .synth import write_world

    cfg = read_config(ns, SynthConfig)
    planted = write_world(ns.out, cfg.seed, cfg.per_class, cfg.size)
    print(json.dumps({"out": str(ns.out), "groups": planted["groups"]}))
    return 0


def cmd_pretrain(ns) -> int:
    from .pretrain import pretrain_tiny

    rec = pretrain_tiny(read_config(ns, PretrainConfig), threads=ns.threads)
    print(json.dumps(rec, indent=1))
    return 0


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


def do_evaluate(ctx: Context, ns, run: Path, groups) -> dict:
    from .evaluate import evaluate

    return evaluate(ctx.run_context, groups, read_config(ns, EvalConfig), run)


def do_export(ctx: Context, ns, run: Path, store: Path, seed: int) -> dict:
    from .export import export_run, write_json

    final = run / "models" / f"group_private-s{seed}" / "final.pt"
    if not final.is_file():
        raise FileNotFoundError(f"{final} does not exist; run `python -m training train` with --seed {seed}")
    out = export_run(ctx.clip, ctx.encoder, ctx.data, ctx.cache, final, store, read_config(ns, DecisionConfig),
                     ctx.split.shots, ns.version, ns.created_at, report_dir=run)
    write_json(run / "export.json", out)
    return out


def cmd_group(ns) -> int:
    res = do_group(Context(ns, ns.data), ns, ns.out)
    print(json.dumps({"groups": res["groups"]}))
    return 0


def cmd_train(ns) -> int:
    ctx = Context(ns, ns.data)
    out, model = do_train(ctx, ns.out, read_groups(ns.groups), ns.variant, ns.resume, ns.stop_after)
    if ctx.dist.is_main:
        print(json.dumps({"run": str(out), "finished": model is not None}))
    return 0


def cmd_evaluate(ns) -> int:
    ctx = Context(ns, ns.data)
    rep = do_evaluate(ctx, ns, ns.run, read_groups(ns.run / "groups.json"))
    if ctx.dist.is_main:
        print((ns.run / "report.md").read_text())
    return 0 if rep else 1


def cmd_export(ns) -> int:
    run_info = json.loads((ns.run / "run.json").read_text())
    ns2 = argparse.Namespace(**{**run_info["model"], **run_info["split"], **run_info["prompt"], **run_info["train"],
                                "domains": run_info["tasks"], "tokenizer": ns.tokenizer or run_info.get("tokenizer")})
    ctx = Context(ns2, ns.data or Path(run_info["data"]))
    out = do_export(ctx, ns, ns.run, ns.store, ns.seed)
    print(json.dumps(out, indent=1))
    return 0


def cmd_rollback(ns) -> int:
    from .export import rollback

    path = rollback(ns.store, ns.domain, ns.version)
    print(json.dumps({"domain": ns.domain, "current": ns.version, "path": str(path)}))
    return 0


def cmd_fit(ns) -> int:
    t0 = time.time()
    ctx = Context(ns, ns.data)
    run = ns.out
    res = do_group(ctx, ns, run)
    groups = res["groups"]
    do_train(ctx, run, groups)
    rep = do_evaluate(ctx, ns, run, groups)
    out = do_export(ctx, ns, run, ns.store, ctx.train.seed)
    routed = None if ns.no_router else do_router(ctx, ns, ns.store, groups, ns.created_at)
    minutes = (time.time() - t0) / 60
    v = rep["variants"]
    summary = {"groups": groups, "minutes": round(minutes, 2),
               "means": {k: round(r["mean"], 4) for k, r in {**v, **({"guarded": rep["guarded"]} if "guarded" in rep
                                                                       else {})}.items()},
               "exported": {d: o["version"] for d, o in out.items()},
               "router": routed and {k: routed["metrics"].get(k) for k in ("accuracy", "group_accuracy", "n")}
               | {"version": routed["version"]}}
    (run / "fit.json").write_text(json.dumps(summary, indent=1) + "\n")
    print((run / "report.md").read_text())
    print(json.dumps(summary, indent=1))
    return 0


def do_router(ctx: Context, ns, store: Path, groups: list[list[str]] | None, created: str = "") -> dict | None:
    from .router import publish_router

    if not ctx.dist.is_main or len(ctx.data.tasks) < 2:
        return None  # one domain needs no router
    return publish_router(ctx.clip, ctx.cache, ctx.data, store, read_config(ns, RouterConfig), groups=groups,
                          created=created)


def cmd_router(ns) -> int:
    from .router import read_groups

    ctx = Context(ns, ns.data)
    out = do_router(ctx, ns, ns.store, read_groups(ns.data), ns.created_at)
    print(json.dumps(out, indent=1))
    return 0


def cmd_label(ns) -> int:
    from promptclip import Label, PromptStore
    from promptclip.labels import publish_label_edit

    store = PromptStore(ns.store)
    if ns.label_command == "add":
        label = Label(ns.name, ns.prompt, ns.unsafe, ns.threshold, openai_category=ns.openai_category)
        bundle, previous = publish_label_edit(store, ns.domain, add=label)
    else:
        bundle, previous = publish_label_edit(store, ns.domain, remove=ns.name)
    print(json.dumps({"domain": ns.domain, "version": bundle.version, "previous": previous,
                      "labels": [lab.name for lab in bundle.manifest.labels]}))
    return 0


def cmd_demo(ns) -> int:
    from .demo import build_demo

    print(json.dumps(build_demo(ns.work, ns.store, main, ns.skip_pretrain, ns.created_at), indent=1))
    return 0


def cmd_curve(ns) -> int:
    from .curve import run_curve, summarise_curve, write_outputs

    ns.out.mkdir(parents=True, exist_ok=True)
    summary = summarise_curve(run_curve(ns))
    paths = write_outputs(summary, ns.out)
    print(Path(paths["markdown"]).read_text())
    print(json.dumps(paths))
    return 0


def cmd_recalibrate(ns) -> int:
    return _recalibrate_module().run(ns)


COMMANDS = {"synth": cmd_synth, "pretrain-tiny": cmd_pretrain, "group": cmd_group, "train": cmd_train,
            "evaluate": cmd_evaluate, "export": cmd_export, "rollback": cmd_rollback, "fit": cmd_fit,
            "router": cmd_router, "label": cmd_label, "demo": cmd_demo, "recalibrate": cmd_recalibrate,
            "curve": cmd_curve}


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from promptclip import ClipLoadError

    try:
        return COMMANDS[ns.command](ns)
    except (FileNotFoundError, ValueError, ClipLoadError) as e:  # bad input: say what, not where (-v: traceback)
        if ns.verbose:
            raise
        log.error("%s", e)
        return 2
