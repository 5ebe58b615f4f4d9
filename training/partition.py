"""From a task similarity matrix to a partition (DESIGN §4), and how stable that partition is.

No model: every rule here is unit-tested on planted matrices. The standard numerics come from
the libraries made for them: average linkage from SciPy (`scipy.cluster.hierarchy.linkage`), the
Laplacian's eigenvectors from `scipy.linalg.eigh`, ranks from `scipy.stats.rankdata`, the
silhouette and the adjusted Rand index from scikit-learn (training only: serving never imports
them).

* `similarity_from_gram`: cosine or dot product (claim 9's literal "product"), centred or not,
  from per-snapshot Gram matrices of the task gradients (G G^T), averaged over snapshots.
* `tower_similarity`: one tower's matrix, both towers' concatenated gradients (`both`), or the
  mean of the two towers' matrices, each normalised on its own (`mean`); optionally rank-transformed.
* `agglomerative_groups`: threshold-free (average linkage, cut at the best silhouette, or at the
  largest eigengap of the normalised Laplacian).
* `spectral_groups`: spectral clustering (normalised Laplacian of the positive part, k by eigengap).
* `band_groups`: the source's threshold bands (e.g. all pairwise >= 0.8, then [0.6, 0.8)).
* `exhaustive_groups`: the source's other criterion, the partition with the largest total
  within-group similarity, by enumerating every partition (N <= 10: at most 115,975).
* `adjusted_rand`, `stability`: agreement of partitions regrouped from resampled snapshots / shots.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform
from scipy.stats import rankdata
from sklearn.metrics import adjusted_rand_score, silhouette_score

MAX_EXHAUSTIVE = 10  # Bell(10) = 115,975 partitions; Bell(11) would be 678,570


def canonical(tasks: list[str], clusters: list[list[int]]) -> list[list[str]]:
    """Groups in task order, each group's members in task order (stable JSON)."""
    return sorted(([tasks[i] for i in sorted(c)] for c in clusters), key=lambda g: tasks.index(g[0]))


def same_partition(a: list[list[str]], b: list[list[str]]) -> bool:
    return {frozenset(g) for g in a} == {frozenset(g) for g in b}


def similarity_from_gram(grams: np.ndarray, measure: str = "cosine", center: bool = False) -> np.ndarray:
    """(S, T, T) Gram matrices of task gradients at S snapshots -> (T, T) similarity, mean over snapshots.

    `center` subtracts the mean task gradient first (J G J with J = I - 11^T / T). `cosine`
    normalises each entry by the two gradients' norms; `dot` keeps the products and divides each
    snapshot by its mean squared norm (one scale per snapshot, so relative magnitudes survive).
    """
    grams = np.asarray(grams, dtype=np.float64)
    if measure not in ("cosine", "dot"):
        raise ValueError(f"measure must be cosine or dot, got {measure!r}")
    t = grams.shape[-1]
    j = np.eye(t) - np.full((t, t), 1.0 / t)
    out = []
    for g in grams:
        if center:
            g = j @ g @ j
        d = np.clip(np.diag(g), 1e-30, None)
        out.append(g / np.sqrt(np.outer(d, d)) if measure == "cosine" else g / d.mean())
    return np.mean(out, axis=0)


TOWER_CHOICES = ("text", "vision", "both", "mean")
TRANSFORMS = ("none", "rank")
K_RULES = ("silhouette", "eigengap")


def rank_transform(sim: np.ndarray) -> np.ndarray:
    """Off-diagonal entries replaced by their rank, scaled to [-1, 1] (ties averaged); diagonal 1.

    Keeps only the order of the pairs: one pair far above the rest no longer stretches the scale.
    """
    sim = np.asarray(sim, dtype=np.float64)
    n = len(sim)
    iu = np.triu_indices(n, 1)
    v = sim[iu]
    ranks = rankdata(v, method="average") - 1.0  # 0-based, ties share their mean rank
    out = np.eye(n)
    scaled = ranks / max(len(v) - 1, 1) * 2.0 - 1.0
    out[iu] = scaled
    out[(iu[1], iu[0])] = scaled
    return out


def tower_similarity(grams: dict[str, np.ndarray], tower: str, measure: str = "cosine", center: bool = False,
                     transform: str = "none") -> np.ndarray:
    """The (T, T) task similarity from per-tower (S, T, T) Gram matrices.

    `text` / `vision`: that tower alone. `both`: the concatenated gradients (the Gram matrices
    summed), where the tower with the larger gradients dominates. `mean`: each tower's matrix
    on its own (normalised per tower), then the two averaged, so each tower has equal weight.
    `transform="rank"` rank-transforms the result (`rank_transform`).
    """
    if tower not in TOWER_CHOICES:
        raise ValueError(f"tower must be one of {TOWER_CHOICES}, got {tower!r}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if tower == "mean":
        sim = (similarity_from_gram(grams["text"], measure, center)
               + similarity_from_gram(grams["vision"], measure, center)) / 2.0
    elif tower == "both":
        sim = similarity_from_gram(np.asarray(grams["text"]) + np.asarray(grams["vision"]), measure, center)
    else:
        sim = similarity_from_gram(grams[tower], measure, center)
    return rank_transform(sim) if transform == "rank" else sim


def silhouette(dist: np.ndarray, labels: list[int]) -> float:
    """Mean silhouette of a partition under a precomputed distance matrix (singletons score 0).

    The diagonal is ignored and a negative distance (a `dot` similarity above 1) counts as 0:
    scikit-learn's silhouette is defined on non-negative dissimilarities only.
    """
    d = np.clip(np.asarray(dist, dtype=np.float64), 0.0, None)
    np.fill_diagonal(d, 0.0)
    return float(silhouette_score(d, labels, metric="precomputed"))


def _linkage_partitions(dist: np.ndarray) -> dict[int, list[list[int]]]:
    """Average-linkage merges (SciPy's UPGMA on the upper triangle): k -> the partition into k clusters, k = n..1."""
    n = len(dist)
    tree = linkage(squareform(np.asarray(dist, dtype=np.float64), checks=False), method="average")
    members = {i: [i] for i in range(n)}
    partitions = {n: [[i] for i in range(n)]}
    for step, (a, b, _, _) in enumerate(tree):  # merge `step` makes cluster n + step of a and b
        members[n + step] = members.pop(int(a)) + members.pop(int(b))
        partitions[n - step - 1] = [list(c) for c in members.values()]
    return partitions


def _labels(clusters: list[list[int]], n: int) -> list[int]:
    labels = [0] * n
    for ci, c in enumerate(clusters):
        for i in c:
            labels[i] = ci
    return labels


def laplacian_spectrum(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the normalised Laplacian of the positive part of `sim`.

    Affinity A = max(sim, 0) (a negative similarity is no affinity), with self-affinity 1 on the
    diagonal so that a task like no other is its own component (eigenvalue 0), not a degenerate
    row; L = I - D^-1/2 A D^-1/2. k well separated blocks give k eigenvalues near 0, then a gap.
    """
    a = np.clip(np.asarray(sim, dtype=np.float64), 0.0, None)
    np.fill_diagonal(a, 1.0)
    d = a.sum(1)
    lap = np.eye(len(a)) - a / np.sqrt(np.outer(d, d))
    return scipy.linalg.eigh(lap, driver="evd")  # LAPACK syevd, as numpy.linalg.eigh


def eigengap_k(sim: np.ndarray) -> tuple[int, dict]:
    """The number of groups (2..N-1) after which the Laplacian's eigenvalues jump the most."""
    w, _ = laplacian_spectrum(sim)
    n = len(w)
    gaps = {k: float(w[k] - w[k - 1]) for k in range(2, n)}
    k = max(gaps, key=lambda kk: (gaps[kk], -kk))
    return k, {"eigenvalues": [round(float(x), 4) for x in w], "eigengap": {str(kk): round(v, 4) for kk, v in gaps.items()}}


def agglomerative_groups(tasks: list[str], sim: np.ndarray, k_rule: str = "silhouette"
                         ) -> tuple[list[list[str]], dict]:
    """Average-linkage clustering on 1 - similarity, cut where the silhouette is highest (or at the eigengap's k).

    No threshold: the matrix itself picks the number of groups (2..N-1).
    """
    n = len(tasks)
    if n <= 2:
        together = n == 2 and sim[0, 1] > 0
        return canonical(tasks, [[0, 1]] if together else [[i] for i in range(n)]), {"rule": "n<=2: cos > 0"}
    if k_rule not in K_RULES:
        raise ValueError(f"k_rule must be one of {K_RULES}, got {k_rule!r}")
    dist = 1.0 - sim
    partitions = _linkage_partitions(dist)
    scores = {k: silhouette(dist, _labels(partitions[k], n)) for k in range(2, n)}
    info = {"rule": f"average linkage, cut at {'best silhouette' if k_rule == 'silhouette' else 'largest eigengap'}",
            "silhouette": {str(kk): round(v, 4) for kk, v in scores.items()}}
    if k_rule == "silhouette":
        k = max(scores, key=lambda kk: (scores[kk], -kk))
    else:
        k, spec = eigengap_k(sim)
        info.update(spec)
    info["k"] = k
    return canonical(tasks, partitions[k]), info


def spectral_groups(tasks: list[str], sim: np.ndarray, k_rule: str = "eigengap") -> tuple[list[list[str]], dict]:
    """Spectral clustering: rows of the first k Laplacian eigenvectors (unit-normalised), grouped by average linkage.

    k (2..N-1) by the largest eigengap, or by the best silhouette on 1 - sim. Deterministic
    (no k-means restarts): the embedded rows are clustered by average linkage on their cosine.
    """
    n = len(tasks)
    if n <= 2:
        return agglomerative_groups(tasks, sim)
    if k_rule not in K_RULES:
        raise ValueError(f"k_rule must be one of {K_RULES}, got {k_rule!r}")
    _, vecs = laplacian_spectrum(sim)
    k_eig, spec = eigengap_k(sim)

    def cut(k: int) -> list[list[int]]:
        x = vecs[:, :k]
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
        return _linkage_partitions(1.0 - x @ x.T)[k]

    dist = 1.0 - sim
    scores = {k: silhouette(dist, _labels(cut(k), n)) for k in range(2, n)}
    k = k_eig if k_rule == "eigengap" else max(scores, key=lambda kk: (scores[kk], -kk))
    return canonical(tasks, cut(k)), {"rule": f"spectral, k by {k_rule}", "k": k,
                                      "silhouette": {str(kk): round(v, 4) for kk, v in scores.items()}, **spec}


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
    return canonical(tasks, clusters), {"rule": "threshold bands", "bands": list(bands)}


def exhaustive_groups(tasks: list[str], sim: np.ndarray) -> tuple[list[list[str]], dict]:
    """The source's criterion: the partition with the largest total within-group similarity.

    Sum over groups of sim[i, j] over pairs i < j inside the group, maximised over every
    partition (depth-first, adding one task at a time). On an uncentred matrix with only positive
    entries this is one group; on a centred one, pairs pull together only where they agree.
    Ties go to the partition found first (fewer groups, earlier tasks together).
    """
    n = len(tasks)
    if n > MAX_EXHAUSTIVE:
        raise ValueError(f"exhaustive grouping enumerates every partition; {n} tasks > {MAX_EXHAUSTIVE}: "
                         "use --group-method agglomerative")
    best = [-np.inf, None]
    clusters: list[list[int]] = []

    def place(i: int, score: float) -> None:
        if i == n:
            if score > best[0] + 1e-12:
                best[0], best[1] = score, [list(c) for c in clusters]
            return
        for c in clusters:
            gain = float(sum(sim[i, m] for m in c))
            c.append(i)
            place(i + 1, score + gain)
            c.pop()
        clusters.append([i])
        place(i + 1, score)
        clusters.pop()

    place(0, 0.0)
    return canonical(tasks, best[1]), {"rule": "max total within-group similarity (exhaustive)",
                                       "score": round(best[0], 4)}


METHODS = ("agglomerative", "spectral", "bands", "exhaustive")


def partition(tasks: list[str], sim: np.ndarray, method: str, bands: list[float], k_rule: str = "silhouette"
              ) -> tuple[list[list[str]], dict]:
    """Dispatch to one grouping rule by name (`k_rule`: how agglomerative / spectral pick the number of groups)."""
    if method == "agglomerative":
        return agglomerative_groups(tasks, sim, k_rule)
    if method == "spectral":
        return spectral_groups(tasks, sim, k_rule)
    if method == "bands":
        return band_groups(tasks, sim, bands)
    if method == "exhaustive":
        return exhaustive_groups(tasks, sim)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def adjusted_rand(a: list[list[str]], b: list[list[str]]) -> float:
    """Adjusted Rand index of two partitions of the same tasks (1: identical, ~0: chance)."""
    la = {t: i for i, g in enumerate(a) for t in g}
    lb = {t: i for i, g in enumerate(b) for t in g}
    tasks = sorted(la)
    return float(adjusted_rand_score([la[t] for t in tasks], [lb[t] for t in tasks]))


def agreement(reference: list[list[str]], draws: list[list[list[str]]]) -> dict:
    """How often resampled partitions equal the reference, and their mean adjusted Rand index."""
    if not draws:
        return {"n": 0}
    return {"n": len(draws), "identical": round(float(np.mean([same_partition(reference, d) for d in draws])), 4),
            "ari_mean": round(float(np.mean([adjusted_rand(reference, d) for d in draws])), 4),
            "ari_min": round(float(np.min([adjusted_rand(reference, d) for d in draws])), 4)}


def stability(tasks: list[str], reference: list[list[str]], grams: np.ndarray, resampled: np.ndarray | None,
              choose, draws: int = 200, seed: int = 0) -> dict:
    """Agreement of `reference` with partitions regrouped from resampled evidence.

    grams: (S, T, T) per-snapshot Gram matrices; resampled: (R, S, T, T) the same on R bootstrap
    resamples of the shots (or None). `choose(grams) -> groups` is the grouping rule. Reports
    snapshots resampled with replacement (`draws` times), each shot resample, and both at once.
    """
    rng = np.random.default_rng(seed)
    s = len(grams)
    picks = [rng.integers(0, s, s) for _ in range(draws)]
    out = {"snapshots": agreement(reference, [choose(grams[p]) for p in picks])}
    if resampled is not None and len(resampled):
        out["shots"] = agreement(reference, [choose(r) for r in resampled])
        both = [choose(resampled[rng.integers(0, len(resampled))][p]) for p in picks[: max(1, draws // 4)]]
        out["snapshots_and_shots"] = agreement(reference, both)
    return out
