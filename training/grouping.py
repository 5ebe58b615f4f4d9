"""Task grouping by gradient similarity (DESIGN §4).

1. Train one global prompt set shared by all tasks (the probe).
2. At several snapshots (never step 0: there every task pulls the same common direction),
   take each task's gradient of its own loss w.r.t. the global prompts of both towers and keep
   the Gram matrices (G G^T) per tower; optionally also on bootstrap resamples of the shots.
3. From the Gram matrices (`partition.similarity_from_gram`): cosine or dot product, centred
   (minus the mean task gradient: the pull every task shares) or not, averaged over snapshots.
4. Group (`partition.partition`): threshold-free agglomerative clustering by default, the
   source's threshold bands (on the uncentred matrix by default, as the source states them), or
   its exhaustive maximum of total within-group similarity. The partition's stability under
   resampled snapshots and shots is written beside it.
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
    agglomerative_groups,
    band_groups,
    exhaustive_groups,
    partition,
    same_partition,
    similarity_from_gram,
    stability,
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
    if gcfg.tower not in ("text", "vision", "both"):
        raise ValueError(f"tower must be text, vision or both, got {gcfg.tower!r}")
    if gcfg.measure not in ("cosine", "dot"):
        raise ValueError(f"measure must be cosine or dot, got {gcfg.measure!r}")
    if gcfg.method not in ("agglomerative", "bands", "exhaustive"):
        raise ValueError(f"method must be agglomerative, bands or exhaustive, got {gcfg.method!r}")
    return snaps


def grouping_center(gcfg: GroupConfig) -> bool:
    """Bands read the uncentred matrix unless asked (the source's 0.8 / 0.6 are uncentred cosines)."""
    return gcfg.bands_center if gcfg.method == "bands" else gcfg.center


def _r(m) -> list:
    return [[round(float(v), 4) for v in row] for row in m]


def similarity_record(tasks: list[str], gcfg: GroupConfig, snaps: list[int], rec: _Snapshots) -> dict:
    """similarity.json: the matrix grouped on, the usual views of it, and the raw per-snapshot Gram matrices."""
    center = grouping_center(gcfg)
    g = tower_grams(rec.main, gcfg.tower)
    per_snap = [similarity_from_gram(x[None], gcfg.measure, center) for x in g]
    return {"tasks": tasks, "matrix": _r(similarity_from_gram(g, gcfg.measure, center)), "tower": gcfg.tower,
            "measure": gcfg.measure, "snapshots": snaps, "centered": center,
            "uncentered": _r(similarity_from_gram(g, gcfg.measure, False)),
            "per_tower": {t: _r(similarity_from_gram(tower_grams(rec.main, t), gcfg.measure, gcfg.center))
                          for t in ("text", "vision", "both")},
            "per_snapshot": [_r(m) for m in per_snap],
            "gram": {t: tower_grams(rec.main, t).tolist() for t in TOWERS},
            "gram_shot_resamples": {t: [tower_grams(r, t).tolist() for r in rec.resampled] for t in TOWERS}}


def group_tasks(rc: RunContext, gcfg: GroupConfig, out_dir: Path) -> dict:
    """Run the grouping; write similarity.json, groups.json and similarity.png into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    snaps = _check(gcfg)
    tcfg, data = rc.train, rc.data
    torch.manual_seed(tcfg.seed)
    shots = load_shots(rc.cache, data, rc.split, tcfg.seed)
    # the probe has its own size and init: the signal needs capacity, not the bundles' small budget
    probe = PromptSizes(group_tokens=gcfg.probe_tokens, private_tokens=0, depth=rc.sizes.depth)
    layout, pcfg = variant_layout("all_shared", data.tasks, [data.tasks], probe)
    model, rms = build_model(rc.encoder, rc.clip.tokenizer, data, layout, pcfg, shots, gcfg.probe_init_scale,
                             tcfg.seed)
    rec = _Snapshots(shots, snaps, gcfg.stability_resamples, tcfg.seed)
    run_training(model, shots, replace(tcfg, steps=gcfg.steps), rms=rms, hook=rec, desc="global prompts")
    tasks, center = data.tasks, grouping_center(gcfg)
    similarity = similarity_record(tasks, gcfg, snaps, rec)
    sim = similarity_from_gram(tower_grams(rec.main, gcfg.tower), gcfg.measure, center)
    groups, cut = partition(tasks, sim, gcfg.method, gcfg.bands)

    def choose(g: np.ndarray) -> list[list[str]]:
        return partition(tasks, similarity_from_gram(g, gcfg.measure, center), gcfg.method, gcfg.bands)[0]

    resampled = np.stack([tower_grams(r, gcfg.tower) for r in rec.resampled]) if rec.resampled else None
    stab = stability(tasks, groups, tower_grams(rec.main, gcfg.tower), resampled, choose,
                     draws=gcfg.stability_draws, seed=tcfg.seed)
    similarity["stability"] = stab
    result = {"groups": groups, "tasks": tasks, "method": gcfg.method, "measure": gcfg.measure, "tower": gcfg.tower,
              "centered": center, "cut": cut, "stability": stab}
    (out_dir / "similarity.json").write_text(json.dumps(similarity, indent=1) + "\n")
    (out_dir / "groups.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_similarity(tasks, sim, groups, out_dir / "similarity.png",
                    f"{gcfg.tower}-tower gradient {gcfg.measure}{' (centred)' if center else ''}, mean of steps {snaps}")
    log.info("groups: %s (stability %s)", groups, stab)
    return result
