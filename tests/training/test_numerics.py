"""Library-backed numerics (SciPy, scikit-learn) against the closed forms they replaced, on fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.covariance
import torch

from training.calibrate import allowed_false_flags, fit_platt, platt_targets, wilson
from training.partition import _linkage_partitions, adjusted_rand, agglomerative_groups, silhouette
from training.plots import pr, roc
from training.scope import ledoit_wolf


def _sim(rng: np.random.Generator, n: int) -> np.ndarray:
    g = rng.normal(size=(n, 12)) + np.repeat(rng.normal(size=(3, 12)) * 2, -(-n // 3), axis=0)[:n]
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    return u @ u.T


def _old_linkage(dist: np.ndarray) -> dict[int, set[frozenset[int]]]:
    """Average linkage by direct search: merge the pair of clusters with the smallest mean distance."""
    clusters = [[i] for i in range(len(dist))]
    out = {len(clusters): {frozenset(c) for c in clusters}}
    while len(clusters) > 1:
        _, a, b = min((dist[np.ix_(clusters[a], clusters[b])].mean(), a, b)
                      for a in range(len(clusters)) for b in range(a + 1, len(clusters)))
        clusters[a] += clusters.pop(b)
        out[len(clusters)] = {frozenset(c) for c in clusters}
    return out


def _old_silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
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


def test_linkage_and_silhouette_match_the_direct_search():
    rng = np.random.default_rng(0)
    for n in (4, 6, 9):
        for _ in range(10):
            dist = 1.0 - _sim(rng, n)
            new = _linkage_partitions(dist)
            old = _old_linkage(dist)
            assert {k: {frozenset(c) for c in v} for k, v in new.items()} == old
            for k in range(2, n):
                labels = np.zeros(n, int)
                for ci, c in enumerate(new[k]):
                    labels[c] = ci
                assert silhouette(dist, labels.tolist()) == pytest.approx(_old_silhouette(dist, labels), abs=1e-12)


def test_silhouette_counts_a_negative_distance_as_zero():
    # a `dot` similarity above 1: the old ratio divided by max(a, b, 1e-12) and blew up; now 0 distance
    dist = np.array([[0.0, -0.2, 0.9, 1.0], [-0.2, 0.0, 0.8, 1.1], [0.9, 0.8, 0.0, 0.1], [1.0, 1.1, 0.1, 0.0]])
    assert silhouette(dist, [0, 0, 1, 1]) == pytest.approx(silhouette(np.clip(dist, 0, None), [0, 0, 1, 1]))
    assert -1.0 <= silhouette(dist, [0, 1, 1, 1]) <= 1.0


def test_planted_blocks_recovered():
    tasks = [f"t{i}" for i in range(9)]
    groups, info = agglomerative_groups(tasks, _sim(np.random.default_rng(3), 9))
    assert groups == [tasks[0:3], tasks[3:6], tasks[6:9]] and info["k"] == 3


def _old_ari(a: list[list[str]], b: list[list[str]]) -> float:
    la = {t: i for i, g in enumerate(a) for t in g}
    lb = {t: i for i, g in enumerate(b) for t in g}
    table = np.zeros((len(a), len(b)))
    for t in la:
        table[la[t], lb[t]] += 1

    def pairs(x):
        return float((x * (x - 1) / 2).sum())

    index, sa, sb = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = len(la) * (len(la) - 1) / 2
    expected = sa * sb / total
    top = (sa + sb) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def test_adjusted_rand_matches_the_contingency_formula():
    rng = np.random.default_rng(1)
    tasks = [f"t{i}" for i in range(8)]
    for _ in range(50):
        a, b = ([[t for t, c in zip(tasks, labels, strict=True) if c == j] for j in set(labels.tolist())]
                for labels in (rng.integers(0, k, 8) for k in rng.integers(1, 6, 2)))
        assert adjusted_rand(a, b) == pytest.approx(_old_ari(a, b), abs=1e-12)


def _old_wilson(k: int, n: int, z: float = 1.96) -> dict:
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return {"rate": round(p, 4), "lo": round(max(0.0, mid - half), 4), "hi": round(min(1.0, mid + half), 4), "n": n}


def test_wilson_is_the_closed_form_at_z_196():
    for n in (*range(1, 80), 288, 640, 1000):
        for k in range(n + 1):
            assert wilson(k, n) == _old_wilson(k, n), (k, n)
    assert wilson(0, 0) == {"rate": None, "lo": None, "hi": None, "n": 0}


def _old_allowed(n: int, target: float, confidence: float) -> int:
    cdf, k = 0.0, -1
    for j in range(n + 1):
        cdf += math.comb(n, j) * target ** j * (1 - target) ** (n - j)
        if cdf > 1 - confidence:
            break
        k = j
    return k


def test_allowed_false_flags_matches_the_summed_binomial():
    for n in range(0, 400, 7):
        for target in (0.01, 0.05, 0.1):
            for confidence in (0.5, 0.8, 0.95):
                assert allowed_false_flags(n, target, confidence) == _old_allowed(n, target, confidence)
    assert allowed_false_flags(20000, 0.05, 0.8) > 900  # the summed form overflowed a float here


def test_platt_is_the_optimum_of_the_soft_target_loss():
    g = torch.Generator().manual_seed(0)
    for n, n_pos, sep in ((200, 30, 2.5), (64, 8, 6.0), (300, 100, 0.5)):
        positive = torch.zeros(n, dtype=torch.bool)
        positive[torch.randperm(n, generator=g)[:n_pos]] = True
        z = torch.randn(n, generator=g, dtype=torch.float64) - 3 + sep * positive
        z[0] = -math.inf  # a label with no probability mass: clamped, as before
        a, b = fit_platt(z, positive)
        x = torch.stack([z.clamp(min=-60.0), torch.ones(n, dtype=torch.float64)], 1)
        grad = x.T @ (torch.sigmoid(x @ torch.tensor([a, b], dtype=torch.float64)) - platt_targets(positive))
        assert float(grad.abs().max()) < 1e-7 and a > 0


def test_ledoit_wolf_matches_scikit_learn():
    g = torch.Generator().manual_seed(0)
    for n, d in ((8, 64), (100, 96), (300, 32)):
        x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
        x = x - x.mean(0)
        ref, _ = sklearn.covariance.ledoit_wolf(x.numpy(), assume_centered=True)
        assert np.allclose(ledoit_wolf(x).numpy(), ref, rtol=1e-12, atol=1e-12 * float(np.abs(ref).max()))


def test_roc_and_pr_match_the_cut_by_cut_counts():
    rng = np.random.default_rng(2)
    pos, neg = np.round(rng.uniform(0, 1, 40), 2), np.round(rng.uniform(0, 0.8, 60), 2)
    cuts = np.unique(np.concatenate([pos, neg]))[::-1]
    fpr, tpr = roc(pos, neg)
    assert np.array_equal(fpr, [0.0] + [(neg >= c).mean() for c in cuts])
    assert np.array_equal(tpr, [0.0] + [(pos >= c).mean() for c in cuts])
    tp = np.array([(pos >= c).sum() for c in cuts], float)
    fp = np.array([(neg >= c).sum() for c in cuts], float)
    recall, precision = pr(pos, neg)
    assert np.array_equal(recall, tp / len(pos)) and np.array_equal(precision, tp / (tp + fp))
