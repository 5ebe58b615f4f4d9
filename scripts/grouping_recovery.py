"""How often each grouping option recovers the planted partition, from `group` runs' saved Gram matrices.

Usage: python scripts/grouping_recovery.py [--filters] DATA1:RUN1[,RUN1b,...] [DATA2:RUN2 ...]
Each RUN is a `python -m training group` output on the synthetic world DATA (planted_groups.json).
Several RUNs for one world (comma-separated: e.g. `--seed 0`, `--seed 1`, `--seed 2`, or one run
with `--group-probe-runs 3`) are pooled as probe runs: their snapshots are averaged together.
`similarity.json["gram"]` holds the per-snapshot Gram matrices of both towers' task gradients, so
every option (tower x measure x centring x transform x rule x k rule x snapshots x probe runs) is
regrouped offline without retraining. Prints, per option, the worlds where it recovers the planted
partition, and the share of shot resamples (`gram_shot_resamples`) that also do. Options are
compared here, never tuned on test accuracy. `--markdown-top N` prints only the N best options.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from training.partition import partition, same_partition, tower_similarity

TOWERS = ("text", "vision", "both", "mean")
RULES = (("agglomerative", "silhouette"), ("agglomerative", "eigengap"), ("spectral", "silhouette"),
         ("spectral", "eigengap"), ("exhaustive", "-"), ("bands", "-"))


def load_world(pair: str) -> dict:
    data, runs = pair.split(":")
    grams: dict[str, list] = {"text": [], "vision": []}
    res: dict[str, list] = {"text": [], "vision": []}
    steps, run_of, tasks = [], [], None
    for ri, run in enumerate(runs.split(",")):
        sim = json.loads((Path(run) / "similarity.json").read_text())
        tasks = tasks or sim["tasks"]
        if sim["tasks"] != tasks:
            raise ValueError(f"{run}: tasks differ from the world's first run")
        n = len(sim["gram"]["text"])
        run_steps = sim.get("gram_steps", sim["snapshots"])
        steps += run_steps
        run_of += [ri] * n
        for t in grams:
            grams[t] += sim["gram"][t]
            rs = sim.get("gram_shot_resamples", {}).get(t, [])
            for r, g in enumerate(rs):
                if len(res[t]) <= r:
                    res[t].append([])
                res[t][r] += g
    planted = json.loads((Path(data) / "planted_groups.json").read_text())["groups"]
    n_res = min(len(v) for v in res.values())
    full = [r for r in range(n_res) if len(res["text"][r]) == len(steps)]  # resamples present in every run
    return {"name": Path(data).name, "tasks": tasks, "steps": np.asarray(steps), "run": np.asarray(run_of),
            "gram": {t: np.asarray(v) for t, v in grams.items()},
            "resamples": [{t: np.asarray(res[t][r]) for t in grams} for r in full], "planted": planted}


def keep(world: dict, snapshots: str, runs: str) -> np.ndarray:
    idx = np.ones(len(world["steps"]), dtype=bool)
    if snapshots == "late":
        idx &= world["steps"] > world["steps"].max() / 2
    if runs == "first":
        idx &= world["run"] == 0
    return np.flatnonzero(idx)


def regroup(tasks: list[str], grams: dict, idx: np.ndarray, opt: tuple) -> list[list[str]]:
    tower, measure, center, transform, (method, k_rule), _, _ = opt
    if method == "bands":
        center = False  # the source's 0.8 / 0.6 are uncentred cosines (as `group` does by default)
    sim = tower_similarity({t: g[idx] for t, g in grams.items()}, tower, measure, center, transform)
    return partition(tasks, sim, method, [0.8, 0.6], k_rule if k_rule != "-" else "silhouette")[0]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("worlds", nargs="+", help="DATA:RUN[,RUN...]")
    ap.add_argument("--towers", nargs="+", default=list(TOWERS))
    ap.add_argument("--measures", nargs="+", default=["cosine", "dot"])
    ap.add_argument("--centred", nargs="+", default=["yes", "no"])
    ap.add_argument("--transforms", nargs="+", default=["none", "rank"])
    ap.add_argument("--rules", nargs="+", default=[f"{m}/{k}" for m, k in RULES],
                    help="method/k_rule, e.g. agglomerative/silhouette spectral/eigengap exhaustive/- bands/-")
    ap.add_argument("--snapshots", nargs="+", default=["all", "late"], help="all | late (steps > max/2)")
    ap.add_argument("--runs", nargs="+", default=["all", "first"], help="all pooled probe runs | the first only")
    ap.add_argument("--markdown-top", type=int, default=0, help="print only the N options recovering most worlds")
    args = ap.parse_args(argv)
    worlds = [load_world(p) for p in args.worlds]
    rules = [tuple(r.split("/")) for r in args.rules]
    options = list(itertools.product(args.towers, args.measures, [c == "yes" for c in args.centred], args.transforms,
                                     rules, args.snapshots, args.runs))
    rows = []
    for opt in options:
        hits, cells, res_hits, res_n = 0, [], 0, 0
        for w in worlds:
            idx = keep(w, opt[5], opt[6])
            ok = same_partition(regroup(w["tasks"], w["gram"], idx, opt), w["planted"])
            hits += ok
            cells.append("yes" if ok else "no")
            for r in w["resamples"]:
                res_hits += same_partition(regroup(w["tasks"], r, idx, opt), w["planted"])
                res_n += 1
        rows.append((hits, res_hits, opt, cells, res_n))
    if args.markdown_top:
        rows = sorted(rows, key=lambda r: (-r[0], -r[1]))[: args.markdown_top]
    print("| tower | measure | centred | transform | rule | k rule | snapshots | probe runs | recovered | "
          + " | ".join(w["name"] for w in worlds) + " | shot resamples recovering |")
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(worlds) + "---|")
    for hits, res_hits, opt, cells, res_n in rows:
        tower, measure, center, transform, (method, k_rule), snaps, runs = opt
        print(f"| {tower} | {measure} | {center} | {transform} | {method} | {k_rule} | {snaps} | {runs} | "
              f"{hits}/{len(worlds)} | " + " | ".join(cells) + f" | {res_hits}/{res_n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
