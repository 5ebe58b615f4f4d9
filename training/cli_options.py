"""The options a config dataclass gives a command (one per field, operator fields first, the rest in an
"advanced" group) and the config read back from the parsed options; the help formatter; the optional
recalibrate hook. Imports no torch, so `--help` stays fast."""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import MISSING, fields


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show an option's default unless it is None or the help text already says it; keep paragraphs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


# Config fields an operator sets, shown in the first group; every other field is a research knob.
OPERATOR_FIELDS = {"model", "pretrained", "device", "threads", "jobs", "seed", "seeds", "per_class", "size", "shots",
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


def recalibrate_module():
    """training.recalibrate when it is installed (it imports no torch at import), else None."""
    if importlib.util.find_spec(RECALIBRATE) is None:
        return None
    return importlib.import_module(RECALIBRATE)
