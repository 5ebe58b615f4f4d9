"""Where group sharing pays: accuracy against shots per label on fresh synthetic worlds.

For each world seed, `synth` writes the world once (OUT/world-<seed>/data); then, for each shots
level, the fit pipeline's grouping and evaluation run on it (OUT/world-<seed>/shots-<k>/), with every
variant of the evaluation report and the zero-shot guard. Export and the router are left out: they
change no accuracy. A finished (world, shots) cell writes cell.json and is skipped on a rerun, so an
interrupted curve continues where it stopped: within an unfinished cell, a finished grouping (same
options) and finished trained variants (their final.pt) are reused too.

Across worlds, the unit is a (world, domain) pair: a variant's accuracy is the mean over units with a
95% t-interval, and its difference against group_private is paired over the same units.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats
from tqdm import tqdm

from .cli_options import read_config
from .config import EvalConfig, GroupConfig, SynthConfig, to_dict
from .evaluate import OURS
from .partition import same_partition
from .steps import Context, do_evaluate, do_group, read_groups

log = logging.getLogger(__name__)
GUARDED = "guarded"


def flat(values: list[list[int]]) -> list[int]:
    """--seeds / --shots as given (each value a comma list) -> one list."""
    return [x for v in values for x in v]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def world_data(ns: argparse.Namespace, seed: int) -> Path:
    """OUT/world-<seed>/data, synthesised once (planted_groups.json is written last: its presence marks it whole)."""
    from .synth import write_world

    data = ns.out / f"world-{seed}" / "data"
    if not (data / "planted_groups.json").is_file():
        cfg = read_config(ns, SynthConfig, seed=seed)
        write_world(data, cfg.seed, cfg.per_class, cfg.size)
    return data


def cell_groups(ctx: Context, ns: argparse.Namespace, run: Path) -> list[list[str]]:
    """The cell's grouping, reused when an interrupted run of this cell finished it with the same options."""
    key = json.loads(json.dumps({"run": ctx.run_info(), "group": to_dict(read_config(ns, GroupConfig, "group_"))}))
    marker = run / "grouping_key.json"
    if marker.is_file() and (run / "groups.json").is_file() and json.loads(marker.read_text()) == key:
        log.info("reusing the finished grouping of %s", run)
        return read_groups(run / "groups.json")
    groups = do_group(ctx, ns, run)["groups"]
    _write_json(marker, key)
    return groups


def finished_cell(path: Path, ns: argparse.Namespace) -> dict | None:
    """A cell's results if it finished with these training seeds, else None (it runs again)."""
    if not path.is_file():
        return None
    cell = json.loads(path.read_text())
    return cell if cell.get("train_seeds") == list(ns.train_seeds) else None


def run_cell(ctx: Context, ns: argparse.Namespace, seed: int, shots: int) -> dict:
    """Group and evaluate one world at one shots level; the cell's accuracies (cell.json)."""
    run = ns.out / f"world-{seed}" / f"shots-{shots}"
    t0 = time.time()
    ctx.split = replace(ctx.split, shots=shots)
    groups = cell_groups(ctx, ns, run)
    ecfg = read_config(ns, EvalConfig, seeds=ns.train_seeds)
    rep = do_evaluate(ctx, ns, run, groups, ecfg)
    planted = json.loads((ctx.data_dir / "planted_groups.json").read_text())["groups"]
    planted = [[t for t in g if t in ctx.data.tasks] for g in planted]
    rows = {**rep["variants"], **({GUARDED: rep["guarded"]} if rep.get("guarded") else {})}
    cell = {"world": seed, "shots": shots, "train_seeds": list(ecfg.seeds), "groups": groups,
            "planted_recovered": same_partition(groups, [g for g in planted if g]),
            "variants": {v: {"per_domain": r["per_domain"], "mean": r["mean"]} for v, r in rows.items()},
            "seconds": round(time.time() - t0, 1)}
    if rep.get("guarded"):
        g = rep["guarded"]
        cell["guard"] = {"weights": {s: {d: c["weight"] for d, c in ch.items()} for s, ch in g["choices"].items()},
                         "within_1_point": g["within_1_point"]}
    _write_json(run / "cell.json", cell)
    return cell


def run_curve(ns: argparse.Namespace) -> list[dict]:
    """Every (world, shots) cell, finished ones read back from their cell.json."""
    seeds, levels = flat(ns.seeds), sorted(set(flat(ns.shots)))
    cells, todo = [], []
    for seed in seeds:
        for k in levels:
            done = finished_cell(ns.out / f"world-{seed}" / f"shots-{k}" / "cell.json", ns)
            if done is not None:
                cells.append(done)
            else:
                todo.append((seed, k))
    log.info("curve: %d cells done, %d to run", len(cells), 0 if ns.report_only else len(todo))
    if ns.report_only:
        todo = []
    ctx, ctx_seed = None, None
    for seed, k in tqdm(todo, desc="curve", unit="cell"):
        if ctx_seed != seed:  # one CLIP load and image cache per world
            ctx, ctx_seed = Context(ns, world_data(ns, seed)), seed
        cells.append(run_cell(ctx, ns, seed, k))
        log.info("world %d, %d shots: %.0f s", seed, k, cells[-1]["seconds"])
    return sorted(cells, key=lambda c: (c["shots"], seeds.index(c["world"])))


def interval(x: np.ndarray) -> dict:
    """Mean of x with its 95% t-interval."""
    m = float(np.mean(x))
    half = float(stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": m, "lo": m - half, "hi": m + half, "n": len(x)}


def units(cells: list[dict], variant: str) -> np.ndarray:
    """A variant's accuracy per (world, domain), in cell then domain order."""
    return np.array([a for c in cells for _, a in sorted(c["variants"][variant]["per_domain"].items())])


def summarise_level(cells: list[dict]) -> dict:
    """One shots level: every variant's accuracy and its paired difference against group_private."""
    ours = units(cells, OURS)
    zs = units(cells, "zero_shot") if "zero_shot" in cells[0]["variants"] else None
    out = {"worlds": [c["world"] for c in cells],
           "planted_recovered": sum(c["planted_recovered"] for c in cells), "variants": {}}
    for v in cells[0]["variants"]:
        acc = units(cells, v)
        row = {"accuracy": interval(acc), "vs_group_private": interval(acc - ours),
               "per_world_vs_group_private": {str(c["world"]): c["variants"][v]["mean"] - c["variants"][OURS]["mean"]
                                              for c in cells}}
        if zs is not None:
            drop = acc - zs
            row["vs_zero_shot"] = {"worst": float(drop.min()), "below_1_point": int((drop < -0.01).sum()),
                                   "units": len(drop)}
        out["variants"][v] = row
    return out


def summarise_curve(cells: list[dict]) -> dict:
    levels = sorted({c["shots"] for c in cells})
    return {"unit": "(world, domain); 95% t-intervals over units, differences paired over the same units",
            "levels": {str(k): summarise_level([c for c in cells if c["shots"] == k]) for k in levels},
            "cells": cells}


def _pts(iv: dict, sign: bool = False) -> str:
    f = "+.1f" if sign else ".1f"
    return f"{100 * iv['mean']:{f}} [{100 * iv['lo']:{f}}, {100 * iv['hi']:{f}}]"


def curve_markdown(summary: dict) -> str:
    """The accuracy table, the paired-difference table and the guard's worst drop, one column per shots level."""
    levels = summary["levels"]
    ks = list(levels)
    first = levels[ks[0]]
    names = [f"{k} shot" + ("" if k == "1" else "s") for k in ks]
    head = ["| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(ks)]
    acc, diff, drop = list(head), list(head), list(head)
    for v in first["variants"]:
        acc.append(f"| {v} | " + " | ".join(_pts(levels[k]["variants"][v]["accuracy"]) for k in ks) + " |")
        if v != OURS:
            diff.append(f"| {v} | " + " | ".join(_pts(levels[k]["variants"][v]["vs_group_private"], True)
                                                for k in ks) + " |")
        if "vs_zero_shot" in first["variants"][v] and v != "zero_shot":
            cells = [levels[k]["variants"][v]["vs_zero_shot"] for k in ks]
            drop.append(f"| {v} | " + " | ".join(f"{100 * z['worst']:+.1f} ({z['below_1_point']}/{z['units']})"
                                                for z in cells) + " |")
    worlds = "; ".join(f"{k}: {', '.join(map(str, levels[k]['worlds']))}" for k in ks)
    units_row = "| (world, domain) units | " + " | ".join(str(levels[k]["variants"][OURS]["accuracy"]["n"])
                                                        for k in ks) + " |"
    recovered = ", ".join(f"{levels[k]['planted_recovered']}/{len(levels[k]['worlds'])} at {k}" for k in ks)
    return "\n".join([
        f"Worlds per shots level: {worlds}.", "",
        "Mean test accuracy (%) over (world, domain) units, 95% t-interval:", "", *acc[:2], units_row, *acc[2:], "",
        f"Difference against {OURS} (points), paired over the same units, 95% t-interval:", "", *diff, "",
        "Worst (world, domain) against zero-shot (points), and units more than 1 point below it:", "", *drop, "",
        f"Planted groups recovered by the gradient grouping (worlds): {recovered} shots."])


def plot_curve(summary: dict, path: Path) -> None:
    """Left: accuracy per variant against shots (log2), 95% bands; right: the paired difference
    against group_private with its 95% bands (zero-shot left out there: far below, it would flatten the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = summary["levels"]
    ks = [int(k) for k in levels]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, v in enumerate(levels[str(ks[0])]["variants"]):
        style = {"lw": 2.5 if v in (OURS, GUARDED) else 1.4, "ls": "--" if v in ("zero_shot", "prototype") else "-",
                 "color": f"C{i}"}
        for axis, key in ((ax, "accuracy"), (bx, "vs_group_private"))[: 1 if v == "zero_shot" else 2]:
            iv = [levels[str(k)]["variants"][v][key] for k in ks]
            (line,) = axis.plot(ks, [100 * b["mean"] for b in iv], marker="o", label=v, **style)
            axis.fill_between(ks, [100 * b["lo"] for b in iv], [100 * b["hi"] for b in iv], color=line.get_color(),
                              alpha=0.10)
    for axis, title in ((ax, "test accuracy (%)"), (bx, f"difference against {OURS} (points; zero_shot: table)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ks, [str(k) for k in ks])
        axis.set_xlabel("shots per label")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    bx.axhline(0, color="black", lw=0.8)
    fig.legend(*ax.get_legend_handles_labels(), loc="center right", fontsize=9)
    worlds = ", ".join(f"{k}: {len(levels[str(k)]['worlds'])}" for k in ks)
    fig.suptitle(f"Accuracy against shots per label; worlds per level {worlds}; 95% t-interval bands over "
                 "(world, domain) units", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(summary: dict, out: Path) -> dict[str, str]:
    """OUT/curve.json, OUT/curve.md, OUT/shots_curve.png."""
    paths = {"json": out / "curve.json", "markdown": out / "curve.md", "plot": out / "shots_curve.png"}
    _write_json(paths["json"], summary)
    paths["markdown"].write_text(curve_markdown(summary) + "\n")
    plot_curve(summary, paths["plot"])
    return {k: str(v) for k, v in paths.items()}
