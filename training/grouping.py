"""Task grouping by gradient similarity (DESIGN §4).

1. Train one global prompt set shared by all tasks (the probe); by default 3 probe runs
   (`probe_runs`, seeds --seed, --seed + 1, ...: other shots and inits), pooled.
2. At several snapshots (never step 0: there every task pulls the same common direction),
   take each task's gradient of its own loss w.r.t. the global prompts of both towers and keep
   the Gram matrices (G G^T) per tower; optionally also on bootstrap resamples of the shots.
3. From the Gram matrices (`partition.tower_similarity`): cosine or dot product, centred
   (minus the mean task gradient: the pull every task shares) or not, averaged over every run's
   snapshots; by default the mean of the two towers' matrices, each normalised on its own.
4. Group (`partition.partition`): threshold-free agglomerative clustering by default (or
   spectral; k by silhouette or eigengap), the source's threshold bands (on the uncentred
   matrix by default, as the source states them), or its exhaustive maximum of total
   within-group similarity. The partition's stability under resampled snapshots and shots is
   written beside it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptclip import MultiTaskCLIP

from .config import GroupConfig, PromptSizes
from .partition import (  # noqa: F401 (re-exported: the package's public grouping rules)
    K_RULES,
    METHODS,
    TOWER_CHOICES,
    TRANSFORMS,
    agglomerative_groups,
    band_groups,
    exhaustive_groups,
    partition,
    same_partition,
    similarity_from_gram,
    spectral_groups,
    stability,
    tower_similarity,
)
from .runtime import RunContext
from .train import FewShot, build_model, load_shots, run_training, variant_layout

log = logging.getLogger(__name__)
TOWERS = ("text", "vision")


def task_gradients(model: MultiTaskCLIP, shots: FewShot, picks: list[torch.Tensor] | None = None
                   ) -> dict[str, torch.Tensor]:
    """Per tower, (T, P) flattened gradient of each task's loss on its own shots w.r.t. the global prompts.

    `picks[t]` (optional) are the sample indices of task t, e.g. a bootstrap resample of its shots.
    """
    vg, tg = model.prompts.group_params(model.tasks[0])  # one group: every task shares these
    device = model.encoder.logit_scale.device
    out: dict[str, list[torch.Tensor]] = {"text": [], "vision": []}
    for t in range(len(model.tasks)):
        idx = shots.by_task(t) if picks is None else picks[t]
        logits = model(shots.images[idx].to(device), shots.tasks[idx].to(device))
        loss = F.cross_entropy(logits, shots.labels[idx].to(device))
        g_text, g_vision = torch.autograd.grad(loss, [tg, vg])
        out["text"].append(g_text.flatten().detach().cpu())
        out["vision"].append(g_vision.flatten().detach().cpu())
    return {k: torch.stack(v) for k, v in out.items()}


def grams(g: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per tower, the (T, T) Gram matrix of the task gradients, in float64."""
    return {k: (v.double() @ v.double().T).numpy() for k, v in g.items()}


def tower_grams(per_snapshot: list[dict[str, np.ndarray]], tower: str) -> np.ndarray:
    """(S, T, T) Gram matrices of one tower, or of both (concatenated gradients: the sum)."""
    if tower == "both":
        return np.stack([s["text"] + s["vision"] for s in per_snapshot])
    return np.stack([s[tower] for s in per_snapshot])


def stacked_grams(per_snapshot: list[dict[str, np.ndarray]]) -> np.ndarray:
    """(S, 2, T, T): both towers' Gram matrices per snapshot (text, vision), resampled together."""
    return np.stack([np.stack([s["text"], s["vision"]]) for s in per_snapshot])


def grouping_similarity(stacked: np.ndarray, gcfg: GroupConfig, center: bool) -> np.ndarray:
    """The matrix grouped on, from `stacked_grams` (any subset of snapshots)."""
    return tower_similarity({"text": stacked[:, 0], "vision": stacked[:, 1]}, gcfg.tower, gcfg.measure, center,
                            gcfg.transform)


def resample_picks(shots: FewShot, n_tasks: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A bootstrap resample (with replacement) of each task's shots."""
    out = []
    for t in range(n_tasks):
        idx = shots.by_task(t)
        out.append(idx[torch.randint(0, len(idx), (len(idx),), generator=gen)])
    return out


def plot_similarity(tasks: list[str], sim: np.ndarray, groups: list[list[str]], path: Path, title: str) -> None:
    """Annotated heatmap, tasks ordered group by group, group blocks outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    order = [t for g in groups for t in g]
    idx = [tasks.index(t) for t in order]
    m = sim[np.ix_(idx, idx)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(tasks), 0.6 + 0.7 * len(tasks)))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
    ax.set_yticks(range(len(order)), order)
    for i in range(len(order)):
        for j in range(len(order)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(m[i, j]) > 0.6 else "black")
    start = 0
    for g in groups:
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), len(g), len(g), fill=False, lw=2, ec="black"))
        start += len(g)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


class _Snapshots:
    """The training hook: Gram matrices of the task gradients at the snapshot steps (and on shot resamples)."""

    def __init__(self, shots: FewShot, steps: list[int], resamples: int, seed: int):
        self.shots, self.steps, self.resamples = shots, steps, resamples
        self.gen = torch.Generator().manual_seed(10_000 + seed)  # never the training generator
        self.main: list[dict[str, np.ndarray]] = []
        self.resampled: list[list[dict[str, np.ndarray]]] = [[] for _ in range(resamples)]

    def __call__(self, step: int, model: MultiTaskCLIP) -> None:
        if step not in self.steps:
            return
        n = len(model.tasks)
        self.main.append(grams(task_gradients(model, self.shots)))
        for r in range(self.resamples):
            self.resampled[r].append(grams(task_gradients(model, self.shots, resample_picks(self.shots, n, self.gen))))
        log.info("gradient snapshot at step %d", step)


def _check(gcfg: GroupConfig) -> list[int]:
    snaps = sorted({s for s in gcfg.snapshots if 0 < s <= gcfg.steps})
    if not snaps:
        raise ValueError(f"snapshots {gcfg.snapshots} must include steps in 1..{gcfg.steps} (step 0 is left out)")
    if gcfg.tower not in TOWER_CHOICES:
        raise ValueError(f"tower must be one of {', '.join(TOWER_CHOICES)}, got {gcfg.tower!r}")
    if gcfg.measure not in ("cosine", "dot"):
        raise ValueError(f"measure must be cosine or dot, got {gcfg.measure!r}")
    if gcfg.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {gcfg.method!r}")
    if gcfg.k_rule not in K_RULES:
        raise ValueError(f"k_rule must be one of {', '.join(K_RULES)}, got {gcfg.k_rule!r}")
    if gcfg.transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {gcfg.transform!r}")
    if gcfg.probe_runs < 1:
        raise ValueError(f"probe_runs must be at least 1, got {gcfg.probe_runs}")
    return snaps


def grouping_center(gcfg: GroupConfig) -> bool:
    """Bands read the uncentred matrix unless asked (the source's 0.8 / 0.6 are uncentred cosines)."""
    return gcfg.bands_center if gcfg.method == "bands" else gcfg.center


def _r(m) -> list:
    return [[round(float(v), 4) for v in row] for row in m]


def similarity_record(tasks: list[str], gcfg: GroupConfig, snaps: list[int], seeds: list[int],
                      main: list[dict[str, np.ndarray]], resampled: list[list[dict[str, np.ndarray]]]) -> dict:
    """similarity.json: the matrix grouped on, the usual views of it, and the raw per-snapshot Gram matrices.

    With several probe runs, `gram` holds every run's snapshots one run after the other
    (`gram_seeds` / `gram_steps` name the probe seed and step of each).
    """
    center = grouping_center(gcfg)
    st = stacked_grams(main)
    per_snap = [grouping_similarity(x[None], gcfg, center) for x in st]
    return {"tasks": tasks, "matrix": _r(grouping_similarity(st, gcfg, center)), "tower": gcfg.tower,
            "measure": gcfg.measure, "transform": gcfg.transform, "snapshots": snaps, "probe_seeds": seeds,
            "gram_steps": [s for _ in seeds for s in snaps], "gram_seeds": [sd for sd in seeds for _ in snaps],
            "centered": center,
            "uncentered": _r(tower_similarity({"text": st[:, 0], "vision": st[:, 1]}, gcfg.tower, gcfg.measure, False)),
            "per_tower": {t: _r(tower_similarity({"text": st[:, 0], "vision": st[:, 1]}, t, gcfg.measure, gcfg.center))
                          for t in TOWER_CHOICES},
            "per_snapshot": [_r(m) for m in per_snap],
            "gram": {t: tower_grams(main, t).tolist() for t in TOWERS},
            "gram_shot_resamples": {t: [tower_grams(r, t).tolist() for r in resampled] for t in TOWERS}}


def probe_gradients(rc: RunContext, gcfg: GroupConfig, snaps: list[int], seed: int) -> _Snapshots:
    """One probe run (its shots, init and training drawn from `seed`): the gradient snapshots."""
    tcfg, data = replace(rc.train, seed=seed), rc.data
    torch.manual_seed(seed)
    shots = load_shots(rc.cache, data, rc.split, seed)
    # the probe has its own size and init: the signal needs capacity, not the bundles' small budget
    probe = PromptSizes(group_tokens=gcfg.probe_tokens, private_tokens=0, depth=rc.sizes.depth)
    layout, pcfg = variant_layout("all_shared", data.tasks, [data.tasks], probe)
    model, rms = build_model(rc.encoder, rc.clip.tokenizer, data, layout, pcfg, shots, gcfg.probe_init_scale, seed,
                             tcfg.input_lowpass())
    rec = _Snapshots(shots, snaps, gcfg.stability_resamples, seed)
    run_training(model, shots, replace(tcfg, steps=gcfg.steps), rms=rms, hook=rec,
                 desc=f"global prompts (probe seed {seed})")
    return rec


def group_tasks(rc: RunContext, gcfg: GroupConfig, out_dir: Path) -> dict:
    """Run the grouping; write similarity.json, groups.json and similarity.png into `out_dir`.

    `gcfg.probe_runs` probes (seeds train.seed, train.seed + 1, ...: different shots and inits)
    pool their snapshots: the matrix is the mean over every run's snapshots, which averages out
    the few-shot gradient noise of any one draw of the shots.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    snaps = _check(gcfg)
    seeds = [rc.train.seed + i for i in range(gcfg.probe_runs)]
    main: list[dict[str, np.ndarray]] = []
    resampled: list[list[dict[str, np.ndarray]]] = [[] for _ in range(gcfg.stability_resamples)]
    for seed in seeds:
        rec = probe_gradients(rc, gcfg, snaps, seed)
        main += rec.main
        for r in range(gcfg.stability_resamples):
            resampled[r] += rec.resampled[r]
    tasks, center = rc.data.tasks, grouping_center(gcfg)
    similarity = similarity_record(tasks, gcfg, snaps, seeds, main, resampled)
    sim = grouping_similarity(stacked_grams(main), gcfg, center)
    groups, cut = partition(tasks, sim, gcfg.method, gcfg.bands, gcfg.k_rule)

    def choose(g: np.ndarray) -> list[list[str]]:
        return partition(tasks, grouping_similarity(g, gcfg, center), gcfg.method, gcfg.bands, gcfg.k_rule)[0]

    shot_draws = np.stack([stacked_grams(r) for r in resampled]) if gcfg.stability_resamples else None
    stab = stability(tasks, groups, stacked_grams(main), shot_draws, choose, draws=gcfg.stability_draws,
                     seed=rc.train.seed)
    similarity["stability"] = stab
    result = {"groups": groups, "tasks": tasks, "method": gcfg.method, "k_rule": gcfg.k_rule, "measure": gcfg.measure,
              "tower": gcfg.tower, "transform": gcfg.transform, "centered": center, "probe_seeds": seeds,
              "cut": cut, "stability": stab}
    (out_dir / "similarity.json").write_text(json.dumps(similarity, indent=1) + "\n")
    (out_dir / "groups.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_similarity(tasks, sim, groups, out_dir / "similarity.png",
                    f"{gcfg.tower}-tower gradient {gcfg.measure}{' (centred)' if center else ''}, mean of steps {snaps}"
                    f"{f' x probe seeds {seeds}' if len(seeds) > 1 else ''}")
    log.info("groups: %s (stability %s)", groups, stab)
    return result
