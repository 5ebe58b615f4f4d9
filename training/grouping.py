"""Task grouping by gradient similarity (DESIGN §4).

1. Train one global prompt set shared by all tasks.
2. At several snapshots (never step 0: there every task pulls the same common direction),
   take each task's gradient of its own loss w.r.t. the global prompts; by default subtract
   the mean gradient over tasks (what every task wants from a shared prompt, e.g. "fit the
   label set at all"), so the cosine compares what each task wants beyond that; average the
   pairwise cosines over the snapshots.
3. Group: threshold-free agglomerative clustering (average linkage on 1 - cos, the cut with
   the best silhouette) by default, or the source method's threshold bands.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptclip import MultiTaskCLIP

from .config import GroupConfig, PromptSizes, SplitConfig, TrainConfig
from .data import ImageCache, TaskData
from .train import build_model, load_shots, run_training, variant_layout

log = logging.getLogger(__name__)


def task_gradients(model: MultiTaskCLIP, shots, tower: str) -> torch.Tensor:
    """(T, P) flattened gradient of each task's loss on its own shots w.r.t. the global prompts."""
    vg, tg = model.prompts.group_params(model.tasks[0])  # one group: every task shares these
    params = {"text": [tg], "vision": [vg], "both": [tg, vg]}[tower]
    out = []
    for t in range(len(model.tasks)):
        idx = shots.by_task(t)
        device = model.encoder.logit_scale.device
        logits = model(shots.images[idx].to(device), shots.tasks[idx].to(device))
        loss = F.cross_entropy(logits, shots.labels[idx].to(device))
        grads = torch.autograd.grad(loss, params)
        out.append(torch.cat([g.flatten() for g in grads]).detach().cpu())
    return torch.stack(out)


def cosine_matrix(g: torch.Tensor, center: bool = False) -> np.ndarray:
    """(T, T) cosines of task gradients; `center` first removes the mean over tasks (the shared pull)."""
    g = g.double()
    if center:
        g = g - g.mean(0, keepdim=True)
    g = F.normalize(g, dim=1)
    return (g @ g.T).numpy()


def silhouette(dist: np.ndarray, labels: list[int]) -> float:
    """Mean silhouette of a partition under a precomputed distance matrix (singletons score 0)."""
    labels = np.asarray(labels)
    scores = []
    for i in range(len(labels)):
        same = (labels == labels[i]) & (np.arange(len(labels)) != i)
        if not same.any():
            scores.append(0.0)
            continue
        a = dist[i, same].mean()
        b = min(dist[i, labels == c].mean() for c in set(labels.tolist()) if c != labels[i])
        scores.append((b - a) / max(a, b, 1e-12))
    return float(np.mean(scores))


def _canonical(tasks: list[str], clusters: list[list[int]]) -> list[list[str]]:
    """Groups in task order, each group's members in task order (stable JSON)."""
    return sorted(([tasks[i] for i in sorted(c)] for c in clusters), key=lambda g: tasks.index(g[0]))


def agglomerative_groups(tasks: list[str], sim: np.ndarray) -> tuple[list[list[str]], dict]:
    """Average-linkage clustering on 1 - similarity, cut where the silhouette is highest.

    No threshold: the matrix itself picks the number of groups (2..N-1). Two tasks group
    together iff their similarity is positive.
    """
    n = len(tasks)
    if n <= 2:
        together = n == 2 and sim[0, 1] > 0
        return _canonical(tasks, [[0, 1]] if together else [[i] for i in range(n)]), {"rule": "n<=2: cos > 0"}
    dist = 1.0 - sim
    clusters = [[i] for i in range(n)]
    partitions = {n: [list(c) for c in clusters]}
    while len(clusters) > 1:
        best = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                d = dist[np.ix_(clusters[a], clusters[b])].mean()
                if best is None or d < best[0]:
                    best = (d, a, b)
        _, a, b = best
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
        partitions[len(clusters)] = [list(c) for c in clusters]
    scores = {}
    for k in range(2, n):
        labels = [0] * n
        for ci, c in enumerate(partitions[k]):
            for i in c:
                labels[i] = ci
        scores[k] = silhouette(dist, labels)
    k = max(scores, key=lambda kk: (scores[kk], -kk))
    return _canonical(tasks, partitions[k]), {"rule": "average linkage, cut at best silhouette", "k": k,
                                              "silhouette": {str(kk): round(v, 4) for kk, v in scores.items()}}


def band_groups(tasks: list[str], sim: np.ndarray, bands: list[float]) -> tuple[list[list[str]], dict]:
    """The source method: tasks whose pairwise similarities all lie in one band form a group.

    Bands are lower bounds, highest first: [0.8, 0.6] means [0.8, inf) then [0.6, 0.8). Groups
    are grown greedily from the most similar free pair; a task that joins none is a singleton.
    """
    free = list(range(len(tasks)))
    clusters = []
    uppers = [np.inf] + list(bands[:-1])
    for lo, hi in zip(bands, uppers, strict=True):
        def ok(i, j, lo=lo, hi=hi):
            return lo <= sim[i, j] < hi
        while True:
            pairs = [(sim[i, j], i, j) for a, i in enumerate(free) for j in free[a + 1:] if ok(i, j)]
            if not pairs:
                break
            _, i, j = max(pairs)
            group = [i, j]
            while True:
                cand = [(min(sim[c, m] for m in group), c) for c in free
                        if c not in group and all(ok(c, m) for m in group)]
                if not cand:
                    break
                group.append(max(cand)[1])
            clusters.append(group)
            free = [f for f in free if f not in group]
    clusters += [[i] for i in free]
    return _canonical(tasks, clusters), {"rule": "threshold bands", "bands": list(bands)}


def same_partition(a: list[list[str]], b: list[list[str]]) -> bool:
    return {frozenset(g) for g in a} == {frozenset(g) for g in b}


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


def group_tasks(clip, encoder, data: TaskData, cache: ImageCache, sizes: PromptSizes, tcfg: TrainConfig,
                split: SplitConfig, gcfg: GroupConfig, out_dir: Path) -> dict:
    """Run the grouping; write similarity.json, groups.json and similarity.png into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    snaps = sorted({s for s in gcfg.snapshots if 0 < s <= gcfg.steps})
    if not snaps:
        raise ValueError(f"snapshots {gcfg.snapshots} must include steps in 1..{gcfg.steps} (step 0 is left out)")
    if gcfg.tower not in ("text", "vision", "both"):
        raise ValueError(f"tower must be text, vision or both, got {gcfg.tower!r}")
    torch.manual_seed(tcfg.seed)
    shots = load_shots(cache, data, split, tcfg.seed)
    # the probe has its own size and init: the signal needs capacity, not the bundles' small budget
    probe = PromptSizes(group_tokens=gcfg.probe_tokens, private_tokens=0, depth=sizes.depth)
    layout, pcfg = variant_layout("all_shared", data.tasks, [data.tasks], probe)
    model = build_model(encoder, clip.tokenizer, data, layout, pcfg, shots, gcfg.probe_init_scale, tcfg.seed)
    per_tower: dict[str, list[np.ndarray]] = {"text": [], "vision": [], "both": []}
    raw: list[np.ndarray] = []

    def snapshot(step: int, m: MultiTaskCLIP) -> None:
        if step in snaps:
            for tower in per_tower:
                g = task_gradients(m, shots, tower)
                per_tower[tower].append(cosine_matrix(g, gcfg.center))
                if tower == gcfg.tower:
                    raw.append(cosine_matrix(g))
            log.info("gradient snapshot at step %d", step)

    cfg = TrainConfig(**{**tcfg.__dict__, "steps": gcfg.steps})
    run_training(model, shots, cfg, hook=snapshot, desc="global prompts")
    mats = {t: np.mean(v, axis=0) for t, v in per_tower.items()}
    sim = mats[gcfg.tower]
    tasks = data.tasks
    if gcfg.method == "agglomerative":
        groups, cut = agglomerative_groups(tasks, sim)
    elif gcfg.method == "bands":
        groups, cut = band_groups(tasks, sim, gcfg.bands)
    else:
        raise ValueError(f"method must be agglomerative or bands, got {gcfg.method!r}")
    r = lambda m: [[round(float(v), 4) for v in row] for row in m]  # noqa: E731
    similarity = {"tasks": tasks, "matrix": r(sim), "tower": gcfg.tower, "snapshots": snaps, "centered": gcfg.center,
                  "uncentered": r(np.mean(raw, axis=0)),
                  "per_tower": {t: r(m) for t, m in mats.items()},
                  "per_snapshot": [r(m) for m in per_tower[gcfg.tower]]}
    result = {"groups": groups, "tasks": tasks, "method": gcfg.method, "cut": cut}
    (out_dir / "similarity.json").write_text(json.dumps(similarity, indent=1) + "\n")
    (out_dir / "groups.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_similarity(tasks, sim, groups, out_dir / "similarity.png",
                    f"{gcfg.tower}-tower gradient cosine, mean of steps {snaps}")
    log.info("groups: %s", groups)
    return result
