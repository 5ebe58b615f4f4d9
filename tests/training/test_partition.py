"""Grouping rules, stability and statistics on planted inputs (training/partition.py, stats.py, baselines.py)."""

from __future__ import annotations

import numpy as np
import pytest

from training.baselines import random_partition
from training.partition import (
    adjusted_rand,
    agglomerative_groups,
    agreement,
    band_groups,
    eigengap_k,
    exhaustive_groups,
    partition,
    rank_transform,
    same_partition,
    similarity_from_gram,
    spectral_groups,
    stability,
    tower_similarity,
)
from training.stats import paired_bootstrap

TASKS = ["a1", "a2", "b1", "b2", "b3", "c1"]
PLANTED = [["a1", "a2"], ["b1", "b2", "b3"], ["c1"]]


def planted_gradients(rng, noise=0.3, common=3.0, n=40):
    """Task gradients = a strong direction every task shares + its block's direction + noise."""
    shared = rng.normal(size=n)
    blocks = {"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n)}
    return np.stack([common * shared + blocks[t[0]] + noise * rng.normal(size=n) for t in TASKS])


def gram(g):
    return g @ g.T


def test_similarity_from_gram_matches_the_gradients():
    g = planted_gradients(np.random.default_rng(0))
    unit = g / np.linalg.norm(g, axis=1, keepdims=True)
    assert np.allclose(similarity_from_gram(gram(g)[None]), unit @ unit.T)
    c = g - g.mean(0)
    cu = c / np.linalg.norm(c, axis=1, keepdims=True)
    assert np.allclose(similarity_from_gram(gram(g)[None], center=True), cu @ cu.T)
    dot = similarity_from_gram(gram(g)[None], "dot")
    assert np.allclose(dot, gram(g) / np.mean(np.diag(gram(g))))
    # two snapshots average
    h = planted_gradients(np.random.default_rng(1))
    both = similarity_from_gram(np.stack([gram(g), gram(h)]))
    assert np.allclose(both, (similarity_from_gram(gram(g)[None]) + similarity_from_gram(gram(h)[None])) / 2)
    with pytest.raises(ValueError, match="cosine or dot"):
        similarity_from_gram(gram(g)[None], "l2")


def test_uncentred_bands_read_the_source_thresholds():
    # the shared pull makes every uncentred cosine high: the bands then group by level, as the source states
    m = np.full((6, 6), 0.5)
    m[np.ix_([0, 1], [0, 1])] = 0.9
    m[np.ix_([2, 3, 4], [2, 3, 4])] = 0.7
    np.fill_diagonal(m, 1.0)
    assert band_groups(TASKS, m, [0.8, 0.6])[0] == PLANTED
    g = planted_gradients(np.random.default_rng(0), common=4.0)
    unc = similarity_from_gram(gram(g)[None])
    assert (unc[~np.eye(6, dtype=bool)] > 0.6).all()  # uncentred: all tasks look alike
    assert len(band_groups(TASKS, unc, [0.8, 0.6])[0]) < 3


def test_exhaustive_maximises_within_group_similarity():
    g = planted_gradients(np.random.default_rng(0))
    centred = similarity_from_gram(gram(g)[None], center=True)
    groups, info = exhaustive_groups(TASKS, centred)
    assert groups == PLANTED
    # nothing beats it: a few alternatives score lower
    def score(parts):
        idx = {t: i for i, t in enumerate(TASKS)}
        return sum(centred[idx[x], idx[y]] for p in parts for i, x in enumerate(p) for y in p[i + 1:])
    for other in (PLANTED[:1] + [["b1", "b2"], ["b3", "c1"]], [TASKS], [[t] for t in TASKS]):
        assert score(other) < info["score"] + 1e-9
    # uncentred with only positive entries: one group (the criterion has no size penalty)
    assert exhaustive_groups(TASKS, similarity_from_gram(gram(g)[None]))[0] == [TASKS]
    with pytest.raises(ValueError, match="exhaustive"):
        exhaustive_groups([f"t{i}" for i in range(11)], np.eye(11))


def test_every_method_recovers_planted_blocks_where_it_should():
    g = planted_gradients(np.random.default_rng(2))
    centred = similarity_from_gram(gram(g)[None], center=True)
    dot = similarity_from_gram(gram(g)[None], "dot", center=True)
    for method in ("agglomerative", "exhaustive"):
        assert partition(TASKS, centred, method, [0.8, 0.6])[0] == PLANTED, method
        assert partition(TASKS, dot, method, [0.8, 0.6])[0] == PLANTED, method
    for method in ("agglomerative", "spectral"):
        for k_rule in ("silhouette", "eigengap"):
            assert partition(TASKS, centred, method, [0.8, 0.6], k_rule)[0] == PLANTED, (method, k_rule)
    with pytest.raises(ValueError, match="agglomerative, spectral, bands, exhaustive"):
        partition(TASKS, centred, "kmeans", [])
    with pytest.raises(ValueError, match="k_rule"):
        partition(TASKS, centred, "agglomerative", [], "gap")


def block_matrix(levels, noise, rng, n=6):
    """Planted blocks at `levels` (within a, b, c), -0.2 between blocks, symmetric noise, 1 on the diagonal."""
    blocks = [t[0] for t in TASKS]
    m = np.array([[levels[blocks[i]] if blocks[i] == blocks[j] else -0.2 for j in range(n)] for i in range(n)])
    e = rng.normal(scale=noise, size=(n, n))
    m = m + (e + e.T) / 2
    np.fill_diagonal(m, 1.0)
    return m


def test_eigengap_counts_planted_blocks():
    for k_planted, tasks_blocks in ((3, None), (2, "ab")):
        rng = np.random.default_rng(k_planted)
        m = block_matrix({"a": 0.8, "b": 0.7, "c": 0.0}, 0.05, rng)
        if tasks_blocks:  # merge a and b into one block: two groups (a+b, c alone is a singleton -> 2 blocks)
            m[np.ix_(range(5), range(5))] = np.maximum(m[np.ix_(range(5), range(5))], 0.75)
            np.fill_diagonal(m, 1.0)
        k, info = eigengap_k(m)
        assert k == k_planted, info
        # eigenvalues ascending, the first near 0 (a connected block structure)
        ev = info["eigenvalues"]
        assert ev == sorted(ev) and abs(ev[0]) < 1e-6


def test_spectral_and_eigengap_cut_where_silhouette_merges_a_weak_block():
    # one strong contrast (a vs b) and a weak third block c: silhouette prefers k=2 (a | b+c),
    # the Laplacian's eigengap still sees three connected components of the positive affinity.
    m = np.full((6, 6), -0.9)
    m[np.ix_([0, 1], [0, 1])] = 0.95
    m[np.ix_([2, 3, 4], [2, 3, 4])] = 0.95
    m[np.ix_([2, 3, 4], [5])] = m[np.ix_([5], [2, 3, 4])] = -0.05
    m[np.ix_([0, 1], [5])] = m[np.ix_([5], [0, 1])] = -0.9
    np.fill_diagonal(m, 1.0)
    sil, info = agglomerative_groups(TASKS, m, "silhouette")
    eig, einfo = agglomerative_groups(TASKS, m, "eigengap")
    spec, sinfo = spectral_groups(TASKS, m, "eigengap")
    assert eig == spec == PLANTED and einfo["k"] == sinfo["k"] == 3
    assert info["k"] in (2, 3)  # whichever the silhouette picks, the tree holds the planted cut
    assert sil == PLANTED or info["k"] == 2


def test_spectral_is_invariant_to_task_order():
    rng = np.random.default_rng(5)
    m = block_matrix({"a": 0.7, "b": 0.6, "c": 0.0}, 0.1, rng)
    perm = rng.permutation(6)
    tasks_p = [TASKS[i] for i in perm]
    a = spectral_groups(TASKS, m)[0]
    b = spectral_groups(tasks_p, m[np.ix_(perm, perm)])[0]
    assert same_partition(a, b) and same_partition(a, PLANTED)


def test_rank_transform_keeps_order_and_removes_scale():
    rng = np.random.default_rng(0)
    m = block_matrix({"a": 0.9, "b": 0.5, "c": 0.0}, 0.05, rng)
    r = rank_transform(m)
    iu = np.triu_indices(6, 1)
    assert np.allclose(r, r.T) and np.allclose(np.diag(r), 1.0)
    assert r[iu].min() == -1.0 and r[iu].max() == 1.0
    # order preserved: the ranks are a monotone map of the entries
    o = np.argsort(m[iu], kind="stable")
    assert (np.diff(r[iu][o]) >= 0).all()
    # any monotone rescaling of the matrix gives the same ranks (and so the same partition)
    assert np.allclose(rank_transform(np.tanh(3 * m)), r)
    assert partition(TASKS, r, "agglomerative", [])[0] == partition(TASKS, rank_transform(m ** 3), "agglomerative", [])[0]
    # ties share their mean rank
    t = rank_transform(np.ones((3, 3)))
    assert np.allclose(t, np.ones((3, 3)) * 0.0 + np.eye(3))


def test_tower_mean_weights_each_tower_equally():
    rng = np.random.default_rng(3)
    gt = planted_gradients(rng)
    # the vision tower: the planted blocks too, but gradients 1000x larger and a different direction per block
    gv = 1000.0 * planted_gradients(np.random.default_rng(4))
    grams = {"text": gram(gt)[None], "vision": gram(gv)[None]}
    st, sv = (similarity_from_gram(grams[t], center=True) for t in ("text", "vision"))
    assert np.allclose(tower_similarity(grams, "mean", center=True), (st + sv) / 2)
    # `both` (concatenated gradients) is the vision tower alone, to the precision of the scale gap
    assert np.allclose(tower_similarity(grams, "both", center=True), sv, atol=1e-4)
    assert np.allclose(tower_similarity(grams, "text", center=True), st)
    # one tower replaced by pure noise: the mean still groups as planted (the other tower's blocks carry it)
    # (several noise snapshots, as the probe gives: the noise tower's cosines average towards 0)
    noisy = {"text": np.repeat(grams["text"], 6, axis=0),
             "vision": np.stack([gram(1000.0 * rng.normal(size=(6, 40))) for _ in range(6)])}
    got = partition(TASKS, tower_similarity(noisy, "mean", center=True), "agglomerative", [])[0]
    home = {t: i for i, g in enumerate(got) for t in g}
    assert home["a1"] == home["a2"] and home["b1"] == home["b2"] == home["b3"] and home["a1"] != home["b1"]
    assert tower_similarity(grams, "mean", transform="rank").max() == 1.0
    with pytest.raises(ValueError, match="tower"):
        tower_similarity(grams, "audio")
    with pytest.raises(ValueError, match="transform"):
        tower_similarity(grams, "mean", transform="spearman")


def test_pooled_probe_runs_average_out_per_run_noise():
    # each "probe run" sees three planted blocks (2 + 3 + 2 tasks, as the synthetic world) plus its
    # own large noise; pooling the snapshots of several runs recovers the blocks more often
    tasks = ["a1", "a2", "b1", "b2", "b3", "c1", "c2"]
    planted = [["a1", "a2"], ["b1", "b2", "b3"], ["c1", "c2"]]
    rng = np.random.default_rng(7)
    dirs = {b: rng.normal(size=40) for b in "abc"}
    base = np.stack([dirs[t[0]] for t in tasks])
    hits_one, hits_pool = 0, 0
    for trial in range(20):
        rng = np.random.default_rng(100 + trial)
        runs = [np.stack([gram(base + 1.5 * rng.normal(size=base.shape)) for _ in range(3)]) for _ in range(4)]

        def groups(g):
            return partition(tasks, similarity_from_gram(g, center=True), "agglomerative", [])[0]

        hits_one += groups(runs[0]) == planted
        hits_pool += groups(np.concatenate(runs)) == planted
    assert hits_pool > hits_one and hits_pool >= 15, (hits_one, hits_pool)


def test_adjusted_rand_and_agreement():
    assert adjusted_rand(PLANTED, PLANTED) == 1.0
    assert adjusted_rand(PLANTED, [["a2", "a1"], ["b3", "b1", "b2"], ["c1"]]) == 1.0
    assert adjusted_rand(PLANTED, [["a1", "b1"], ["a2", "b2"], ["b3", "c1"]]) < 0.1
    a = agreement(PLANTED, [PLANTED, [TASKS]])
    assert a["n"] == 2 and a["identical"] == 0.5 and a["ari_min"] == 0.0


def test_stability_is_high_for_clear_blocks_and_low_for_noise():
    rng = np.random.default_rng(0)
    snaps = np.stack([gram(planted_gradients(np.random.default_rng(1), noise=0.3) + 0.2 * rng.normal(size=(6, 40)))
                      for _ in range(6)])

    def choose(gr):
        return partition(TASKS, similarity_from_gram(gr, center=True), "agglomerative", [])[0]

    clear = stability(TASKS, PLANTED, snaps, snaps[None], choose, draws=20)
    assert clear["snapshots"]["identical"] == 1.0 and clear["shots"]["ari_mean"] == 1.0
    noise = np.stack([gram(rng.normal(size=(6, 40))) for _ in range(6)])
    assert stability(TASKS, PLANTED, noise, None, choose, draws=20)["snapshots"]["ari_mean"] < 0.5


def test_random_partition_keeps_sizes_and_differs():
    seen = set()
    for seed in range(5):
        p = random_partition(TASKS, PLANTED, seed)
        assert sorted(map(len, p)) == [1, 2, 3] and not same_partition(p, PLANTED)
        assert sorted(t for g in p for t in g) == sorted(TASKS)
        assert p == random_partition(TASKS, PLANTED, seed)  # deterministic
        seen.add(str(p))
    assert len(seen) > 1


def test_paired_bootstrap_intervals():
    rng = np.random.default_rng(0)
    a = {s: {d: (rng.random(60) < 0.7).astype(float) for d in "xyz"} for s in range(3)}
    b = {s: {d: (rng.random(60) < 0.4).astype(float) for d in "xyz"} for s in range(3)}
    res = paired_bootstrap(a, b, 500)
    assert 0.1 < res["lo"] < res["diff"] < res["hi"] < 0.5 and res["p_le_0"] == 0.0
    same = paired_bootstrap(a, a, 200)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap(a, {0: b[0]})
