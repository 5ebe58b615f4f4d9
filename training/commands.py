"""What each `python -m training` command does with its parsed options (the parser is training.cli_parser):
each prints its result as JSON (or the report it wrote) and returns the exit status."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .cli_options import read_config, recalibrate_module
from .config import EvalConfig, PretrainConfig, SynthConfig
from .steps import Context, do_evaluate, do_export, do_group, do_router, do_train, read_groups, train_all


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
    train_all(ctx, ns, run, groups, read_config(ns, EvalConfig), extra_seeds=(ctx.train.seed,))
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


def cmd_curve(ns) -> int:
    from .curve import run_curve, summarise_curve, write_outputs

    ns.out.mkdir(parents=True, exist_ok=True)
    summary = summarise_curve(run_curve(ns))
    paths = write_outputs(summary, ns.out)
    print(Path(paths["markdown"]).read_text())
    print(json.dumps(paths))
    return 0


def cmd_recalibrate(ns) -> int:
    return recalibrate_module().run(ns)


COMMANDS = {"synth": cmd_synth, "pretrain-tiny": cmd_pretrain, "group": cmd_group, "train": cmd_train,
            "evaluate": cmd_evaluate, "export": cmd_export, "rollback": cmd_rollback, "fit": cmd_fit,
            "router": cmd_router, "label": cmd_label, "recalibrate": cmd_recalibrate, "curve": cmd_curve}
