"""Paired bootstrap intervals for the evaluation report (DESIGN §7).

Every variant is tested on the same test images with the same training seeds, so differences
are paired. One bootstrap draw resamples the training seeds (with replacement) and, shared by
those seeds, each domain's test images (with replacement), then takes the mean over domains of
the mean difference in correctness: the interval holds both seed and test-sample variation. The
grouping is not redrawn: its variation is reported separately (groups.json "stability").
"""

from __future__ import annotations

import numpy as np

Correct = dict[int, dict[str, np.ndarray]]  # seed -> domain -> (n_test,) correctness in [0, 1]


def paired_bootstrap(a: Correct, b: Correct, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over domains of accuracy(a) - accuracy(b), with a 95% percentile interval.

    a, b: the same seeds and domains, per-image correctness in the same image order.
    """
    seeds = sorted(a)
    if sorted(b) != seeds:
        raise ValueError(f"paired bootstrap needs the same seeds, got {seeds} and {sorted(b)}")
    domains = sorted(a[seeds[0]])
    rng = np.random.default_rng(seed)
    pick_seeds = rng.integers(0, len(seeds), (n_boot, len(seeds)))  # (B, S)
    per_domain, point = [], []
    for d in domains:
        diff = np.stack([np.asarray(a[s][d], float) - np.asarray(b[s][d], float) for s in seeds])  # (S, n)
        point.append(diff.mean())
        over_seeds = diff[pick_seeds].mean(1)  # (B, n): each draw's seeds, per image
        images = rng.integers(0, diff.shape[1], (n_boot, diff.shape[1]))  # (B, n)
        per_domain.append(np.take_along_axis(over_seeds, images, 1).mean(1))
    draws = np.mean(per_domain, axis=0)  # (B,)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"diff": float(np.mean(point)), "lo": float(lo), "hi": float(hi), "n_boot": n_boot,
            "p_le_0": float((draws <= 0).mean())}


def per_seed_diffs(a: Correct, b: Correct) -> dict[str, float]:
    """Per training seed, mean over domains of accuracy(a) - accuracy(b)."""
    return {str(s): float(np.mean([np.mean(a[s][d]) - np.mean(b[s][d]) for d in a[s]])) for s in sorted(a)}
