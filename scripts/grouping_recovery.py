"""How often each grouping option recovers the planted partition, from `group` runs' saved Gram matrices.

Usage: python scripts/grouping_recovery.py DATA1:RUN1 [DATA2:RUN2 ...]
Each RUN is a `python -m training group` output on the synthetic world DATA (planted_groups.json).
`similarity.json["gram"]` holds the per-snapshot Gram matrices of both towers' task gradients, so
every option (tower x measure x centring x rule x snapshots) is regrouped offline without
retraining. Prints, per option, the worlds where it recovers the planted partition, and the share
of shot resamples (`gram_shot_resamples`) that also do. Options are compared here, never tuned on
test accuracy.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from training.partition import partition, same_partition, similarity_from_gram

OPTIONS = list(itertools.product(("text", "vision", "both"), ("cosine", "dot"), (True, False),
                                 ("agglomerative", "exhaustive", "bands"), ("all", "late")))


def tower(grams: dict, name: str) -> np.ndarray:
    if name == "both":
        return np.asarray(grams["text"]) + np.asarray(grams["vision"])
    return np.asarray(grams[name])


def regroup(tasks, g, snaps, opt) -> list[list[str]]:
    _, measure, center, method, which = opt
    keep = [i for i, s in enumerate(snaps) if which == "all" or s > max(snaps) / 2]
    return partition(tasks, similarity_from_gram(g[keep], measure, center), method, [0.8, 0.6])[0]


def main(pairs: list[str]) -> int:
    worlds = []
    for pair in pairs:
        data, run = (Path(p) for p in pair.split(":"))
        sim = json.loads((run / "similarity.json").read_text())
        planted = json.loads((data / "planted_groups.json").read_text())["groups"]
        worlds.append((data.name, sim, planted))
    print("| tower | measure | centred | rule | snapshots | recovered | " + " | ".join(w[0] for w in worlds)
          + " | shot resamples recovering |")
    print("|---|---|---|---|---|---|" + "---|" * len(worlds) + "---|")
    for opt in OPTIONS:
        hits, cells, res_hits, res_n = 0, [], 0, 0
        for _, sim, planted in worlds:
            tasks, snaps = sim["tasks"], sim["snapshots"]
            got = regroup(tasks, tower(sim["gram"], opt[0]), snaps, opt)
            ok = same_partition(got, planted)
            hits += ok
            cells.append("yes" if ok else "no")
            resamples = sim.get("gram_shot_resamples", {})
            for r in range(len(resamples.get("text", []))):
                g = tower({k: v[r] for k, v in resamples.items()}, opt[0])
                res_hits += same_partition(regroup(tasks, g, snaps, opt), planted)
                res_n += 1
        print(f"| {opt[0]} | {opt[1]} | {opt[2]} | {opt[3]} | {opt[4]} | {hits}/{len(worlds)} | "
              + " | ".join(cells) + f" | {res_hits}/{res_n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
