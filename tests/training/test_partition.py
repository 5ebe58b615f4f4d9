"""Grouping rules, stability and statistics on planted inputs (training/partition.py, stats.py, baselines.py)."""

from __future__ import annotations

import numpy as np
import pytest

from training.baselines import random_partition
from training.partition import (
    adjusted_rand,
    agreement,
    band_groups,
    exhaustive_groups,
    partition,
    same_partition,
    similarity_from_gram,
    stability,
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
    with pytest.raises(ValueError, match="agglomerative, bands or exhaustive"):
        partition(TASKS, centred, "spectral", [])


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
