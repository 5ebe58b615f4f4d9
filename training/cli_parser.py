"""Train prompt bundles for your image domains and publish them into a bundle store.

Data is one folder per domain, one sub-folder per label: DATA/<domain>/<label>/<image>, with an
optional DATA/<domain>/labels.json for prompts and unsafe flags. The usual run is one command:

  python -m training fit --data DATA --out RUN --store STORE

(group, train, evaluate and export in one go), then serve STORE with MODERATION_STORE_DIR=STORE
python -m service. Each command's --help lists the options an operator sets first; the groups
marked "advanced" are research knobs whose defaults are tuned.
"""
# This docstring is the description `python -m training --help` prints (build_parser): written for operators.

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

from .cli_options import DefaultsFormatter, add_config, int_list, recalibrate_module
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
)
from .router_config import RouterConfig

Command = Callable[..., argparse.ArgumentParser]  # add_command with the subparsers bound


def add_command(sub, name: str, summary: str, description: str = "",
                usage: str | None = None) -> argparse.ArgumentParser:
    """One subcommand: its summary (in the command list) opens its description."""
    text = f"{summary[0].upper()}{summary[1:]}."
    return sub.add_parser(name, help=summary, description=f"{text}\n\n{description}" if description else text,
                          formatter_class=DefaultsFormatter, usage=usage and f"%(prog)s {usage} [options]")


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


def add_fit(command: Command) -> None:
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


def add_curve(command: Command) -> None:
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


def add_synth(command: Command) -> None:
    s = command("synth", "write the synthetic multi-domain data set",
                "Writes DATA/<domain>/<label>/*.png and DATA/planted_groups.json; a seed gives the same images on "
                "every release.")
    s.add_argument("--out", required=True, type=Path, help="output DATA directory")
    add_config(s, SynthConfig)


def add_group(command: Command) -> None:
    s = command("group", "group the domains by gradient similarity",
                "Writes RUN/similarity.json, RUN/groups.json and RUN/similarity.png.",
                usage="--data DATA --out RUN")
    data_args(s)
    s.add_argument("--out", required=True, type=Path, help="RUN directory")
    model_args(s)
    recipe(s)
    add_config(s, GroupConfig, prefix="group_")


def add_train(command: Command) -> None:
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


def add_evaluate(command: Command) -> None:
    s = command("evaluate", "compare the trained prompts with baselines on the test split",
                "Writes RUN/report.json and RUN/report.md (accuracy per domain, several seeds, 95% intervals).",
                usage="--data DATA --run RUN")
    data_args(s)
    s.add_argument("--run", required=True, type=Path, help="RUN directory (reads RUN/groups.json)")
    model_args(s)
    recipe(s)
    add_config(s, EvalConfig)


def add_export(command: Command) -> None:
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


def add_rollback(command: Command) -> None:
    s = command("rollback", "point a domain's CURRENT at an older version",
                "The service picks it up on /admin/reload or its next poll.")
    s.add_argument("--store", required=True, type=Path, help="bundle store")
    s.add_argument("--domain", required=True, help="a domain of the store")
    s.add_argument("--version", required=True, help="version to make current, e.g. v0001")


def add_router(command: Command) -> None:
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


def add_label(command: Command) -> None:
    s = command("label", "add or remove a label of a published domain without retraining")
    lab = s.add_subparsers(dest="label_command", required=True, metavar="ACTION")
    for name, what in (("add", "publish the next version with one more (uncalibrated) label"),
                       ("remove", "publish the next version without a label")):
        t = lab.add_parser(name, help=what, description=what, formatter_class=DefaultsFormatter)
        t.add_argument("--store", required=True, type=Path, help="bundle store")
        t.add_argument("--domain", required=True, help="domain whose CURRENT bundle is edited")
        t.add_argument("--name", required=True, help="label name, e.g. star")
        if name == "add":
            t.add_argument("--prompt", required=True, help="text fed to CLIP, e.g. 'a photo of a star.'")
            t.add_argument("--unsafe", action="store_true", help="flagging this label is a moderation hit")
            t.add_argument("--threshold", type=float, default=0.5, help="probability at or above which it flags")
            t.add_argument("--openai-category", default=None, help="OpenAI moderation category it also reports")


def add_recalibrate(command: Command) -> None:
    recal = recalibrate_module()
    if recal is not None:
        s = command("recalibrate", "refit a domain's decision rule with reviewers' verdicts and publish it")
        recal.add_arguments(s)


def add_pretrain_tiny(command: Command) -> None:
    s = command("pretrain-tiny", "pretrain the embedded tiny CLIP on a captioned synthetic corpus",
                "Rewrites promptclip/embedded/tiny-clip.safetensors (the shipped demo model).")
    s.add_argument("--threads", type=int, default=ModelConfig.threads, help="torch CPU threads")
    add_config(s, PretrainConfig)


def add_demo(command: Command) -> None:
    s = command("demo", "rebuild the embedded tiny CLIP and the demo bundles from seeds",
                "Replaces the demo domains of STORE; the same software versions give the same files.")
    s.add_argument("--work", type=Path, default=Path("runs/demo"), help="scratch directory (data, run)")
    s.add_argument("--store", type=Path, default=Path("prompts_store"), help="store whose domains are replaced")
    s.add_argument("--skip-pretrain", action="store_true", help="reuse the embedded tiny CLIP as it is")
    s.add_argument("--created-at", default="2026-01-01T00:00:00+00:00", help="fixed manifest timestamp")


COMMAND_PARSERS = (add_fit, add_curve, add_synth, add_group, add_train, add_evaluate, add_export, add_rollback,
                   add_router, add_label, add_recalibrate, add_pretrain_tiny, add_demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=DefaultsFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks for input errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMAND_PARSERS:  # in the order `--help` lists them
        add(functools.partial(add_command, sub))
    return p
