"""Fit a domain's decision rule on held-out calibration images (DESIGN §11); never on test.

* Per-label probabilities: Platt scaling one-vs-rest of the label's log-probability among the
  labels and the negative labels (`neglabel`), or among the labels alone (`closed_set`), with
  Platt's prior-corrected targets (robust at 16 positives). Both are fitted; the domain keeps the
  one that flags more unsafe calibration images at the same false-flag bound.
* In scope: conformal cuts on in-domain images only. The scope score of each calibration image
  comes from a model fitted without its fold (cross-fitting, `training.scope`), so the cut keeps
  at least `scope_keep` of fresh in-domain images in expectation.
* Flag threshold: one cut on the calibrated probability shared by the domain's unsafe labels,
  chosen on the benign calibration images so that, with probability `false_flag_confidence`
  over the calibration sample, the benign false-flag rate on fresh images is at most the
  target: the cut flags the largest k benign calibration images with P(Binomial(n, target) <= k)
  <= 1 - confidence (a binomial tolerance bound; at n = 64, target 0.05, confidence 0.8: k = 1).
  Where the sample is too small for that bound (n < 32 at 0.05 and 0.8), the cut falls back to the
  point estimate (floor(target x n) benign flags, at least the cut above every benign image): the
  domain still flags, `targets_met.max_false_flag` says the bound was not shown, and the
  manifest's intervals are as wide as the sample makes them.
* Review threshold: the highest cut that sends enough unsafe images to review to reach the
  review target (caught = flagged or reviewed), capped by the review budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logit, ndtr
from scipy.stats import binom, binomtest
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from promptclip.decisions import NEG_INF, PROBABILITY_BASES, BatchScores

from .config import DecisionConfig

NEVER_FLAG = 1.000001  # a threshold above every probability


Z = 1.96  # the interval's normal quantile, as the shipped manifests state their 95% intervals
WILSON_LEVEL = 2.0 * float(ndtr(Z)) - 1.0  # the confidence level whose two-sided quantile is Z (0.9500042)


def wilson(k: int, n: int) -> dict:
    """A rate with its 95% Wilson score interval (`scipy.stats.binomtest(...).proportion_ci`, z = 1.96)."""
    if n == 0:
        return {"rate": None, "lo": None, "hi": None, "n": 0}
    ci = binomtest(k, n).proportion_ci(confidence_level=WILSON_LEVEL, method="wilson")
    return {"rate": round(k / n, 4), "lo": round(max(0.0, float(ci.low)), 4), "hi": round(min(1.0, float(ci.high)), 4),
            "n": n}


def platt_targets(positive: Tensor) -> Tensor:
    """Platt's prior-corrected targets: (N+ + 1)/(N+ + 2) for positives, 1/(N- + 2) for the rest (float64)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return torch.where(positive, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)).double()


def fit_platt(z: Tensor, positive: Tensor) -> tuple[float, float]:
    """Platt's sigmoid(a * z + b): an unpenalised logistic regression on the prior-corrected targets.

    z: (N,) scores; positive: (N,) bool. The soft targets (`platt_targets`) keep the fit finite
    when the classes separate, as they do for easy labels (Lin, Lin and Weng, 2007); scikit-learn
    fits them as each image twice, positive with weight t and negative with weight 1 - t.
    """
    x = z.detach().double().clamp(min=-60.0).numpy()[:, None]
    t = platt_targets(positive).numpy()
    if len(x) == 0:
        return 1.0, 0.0  # no calibration image: sigmoid(z) unchanged
    if bool((x == x[0]).all()):  # one distinct score: no slope to fit, the prior-corrected base rate
        return 0.0, float(logit(t.mean()))
    fit = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10, max_iter=100).fit(
        np.concatenate([x, x]), np.r_[np.ones(len(x)), np.zeros(len(x))], sample_weight=np.r_[t, 1 - t])
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def allowed_false_flags(n: int, target: float, confidence: float) -> int:
    """Largest k with P(Binomial(n, target) <= k) <= 1 - confidence; -1 when even k = 0 is too many."""
    cdf = binom.cdf(np.arange(n + 1), n, target)  # non-decreasing in k
    return int((cdf <= 1 - confidence).sum()) - 1


def conformal_lower_cut(scores: Tensor, alpha: float) -> float:
    """A cut keeping >= 1 - alpha of fresh in-distribution scores (split conformal, lower tail).

    Fewer than 1 / alpha - 1 scores cannot show that share: the cut then sits above the lowest
    score (keeping n / (n + 1) of fresh images in expectation) rather than keeping everything, so
    a small data set still puts far-off images out of scope.
    """
    s = scores.double().sort().values
    s = s[torch.isfinite(s)]
    if len(s) < 2:
        return NEG_INF
    k = max(1, math.floor(alpha * (len(s) + 1)))  # this many calibration scores may fall below the cut
    return float((s[k - 1] + s[k]) / 2) if k < len(s) else float(s[-1])


def upper_cut(scores: Tensor, allowed: int) -> float:
    """The lowest cut with at most `allowed` of `scores` at or above it (midway between neighbours).

    allowed < 0: a cut above every probability (NEVER_FLAG): the target cannot be shown on this sample.
    """
    s = scores.double().sort(descending=True).values
    s = s[torch.isfinite(s)]
    if allowed < 0:
        return NEVER_FLAG
    if allowed >= len(s):
        return 0.0
    if allowed == 0:
        return float(s[0]) + 1e-6
    return float((s[allowed - 1] + s[allowed]) / 2)


@dataclass
class FittedRule:
    calibrations: list[dict]  # per label: {"method", "a", "b", "n_pos", "n"}
    threshold: float  # shared flag cut on the calibrated probability of unsafe labels
    decision: dict  # the manifest's `decision`


def _unsafe_max(probs: Tensor, unsafe: Tensor) -> Tensor:
    return probs.masked_fill(~unsafe[None, :], NEG_INF).max(1).values  # (N,)


def fit_rule(scores: BatchScores, scope: Tensor, y: Tensor, unsafe: Tensor, cfg: DecisionConfig,
             scope_pool: Tensor | None = None, row_unsafe: Tensor | None = None) -> FittedRule:
    """Fit one domain's rule on its calibration images.

    scores: the images scored against the domain (one row each); scope: (N,) cross-fitted scope
    scores; y: (N,) label index; unsafe: (C,) bool per label; scope_pool: every in-domain image's
    cross-fitted scope score the scope cut is taken on (default: `scope`; export adds the training
    shots); row_unsafe: (N,) whether each image is unsafe (default: its label's flag; reviewers'
    verdicts give it, with y = -1 for an image none of the labels describe). Both probability bases
    are fitted (`promptclip.decisions.PLATT_INPUTS`); the one flagging more unsafe calibration
    images at its own false-flag threshold is kept (ties: neglabel).
    """
    is_unsafe = unsafe[y.clamp_min(0)] & (y >= 0) if row_unsafe is None else row_unsafe
    signals = set(cfg.scope_signals)
    pool = scope if scope_pool is None else scope_pool
    gaussian = bool(torch.isfinite(pool).any())  # a scope model was fitted
    alpha = (1 - cfg.scope_keep) / max(1, int(gaussian) + int("neglabel" in signals))
    cut = conformal_lower_cut(pool, alpha) if gaussian else NEG_INF
    mass_cut = conformal_lower_cut(scores.label_mass, alpha) if "neglabel" in signals else 0.0
    in_scope = (scope >= cut) & (scores.label_mass >= mass_cut)
    fits = {basis: _fit_basis(scores, basis, in_scope, y, unsafe, is_unsafe, cfg) for basis in PROBABILITY_BASES}
    basis = max(PROBABILITY_BASES, key=lambda k: (fits[k]["recall"], k == "neglabel"))
    fit = fits[basis]
    decision = {
        "rule": "flag: in scope and an unsafe label's calibrated probability >= its threshold; review: not "
                "flagged, in scope and the largest unsafe probability >= review_threshold",
        "targets": {"max_false_flag": cfg.max_false_flag, "false_flag_confidence": cfg.false_flag_confidence,
                    "review_target": cfg.review_target,
                    "review_budget": cfg.review_budget, "scope_keep": cfg.scope_keep},
        "review_threshold": round(fit["review"], 6),
        "probability_basis": basis,
        "calibration_recall": {k: round(f["recall"], 6) for k, f in fits.items()},
        "scope": {"signals": sorted(signals), "cut": round(cut, 6) if cut > NEG_INF else None,
                  "mass_cut": round(mass_cut, 6), "cut_from": int(torch.isfinite(pool).sum())},
        "calibration_split": {"images": len(y), "benign": int((~is_unsafe).sum()), "unsafe": int(is_unsafe.sum()),
                              "benign_flags_allowed": fit["allowed"], "bound_shown": fit["bound_shown"]},
        "targets_met": {"max_false_flag": fit["bound_shown"], "review_target": fit["review_met"]},
        "can_flag": fit["can_flag"],
        "cannot_flag_reason": fit["why_not"],
    }
    return FittedRule(fit["cal"], round(fit["threshold"], 6), decision)


def _fit_basis(scores: BatchScores, basis: str, in_scope: Tensor, y: Tensor, unsafe: Tensor, is_unsafe: Tensor,
               cfg: DecisionConfig) -> dict:
    """Platt per label on `basis`, the shared flag threshold, the review threshold and the recall they give."""
    c = len(unsafe)
    z = scores.platt_input(basis)[:, :c]
    cal = []
    for li in range(c):
        a, b = fit_platt(z[:, li], y == li)
        cal.append({"method": "platt", "a": round(a, 6), "b": round(b, 6), "n_pos": int((y == li).sum()),
                    "n": len(y)})
    a = torch.tensor([d["a"] for d in cal], dtype=torch.float64)
    b = torch.tensor([d["b"] for d in cal], dtype=torch.float64)
    probs = torch.sigmoid(a * z.double() + b)  # (N, C), as promptclip.decisions computes them
    u = _unsafe_max(probs, unsafe).masked_fill(~in_scope, NEG_INF)
    n_benign = int((~is_unsafe).sum())
    allowed = allowed_false_flags(n_benign, cfg.max_false_flag, cfg.false_flag_confidence)
    bound_shown = allowed >= 0
    if not bound_shown:  # too few benign images for the bound: the point estimate, stated as such
        allowed = math.floor(cfg.max_false_flag * n_benign)
    why_not = None if bool(unsafe.any()) else "no unsafe label"
    if why_not is None and not bool(is_unsafe.any()):
        why_not = "no unsafe image in the calibration split"
    if why_not is None and n_benign == 0:
        why_not = "no benign image in the calibration split"
    t = upper_cut(u[~is_unsafe], allowed) if why_not is None else NEVER_FLAG
    if why_not is None and t > 1.0:
        why_not = "every benign calibration image scores at the top"
    r, review_met = _review_cut(u, is_unsafe, t, cfg)
    recall = float((u[is_unsafe] >= t).double().mean()) if bool(is_unsafe.any()) else 0.0
    return {"cal": cal, "threshold": t, "review": r, "review_met": review_met, "allowed": allowed, "recall": recall,
            "bound_shown": bound_shown, "can_flag": why_not is None, "why_not": why_not}


def _review_cut(u: Tensor, is_unsafe: Tensor, t: float, cfg: DecisionConfig) -> tuple[float, bool]:
    """Review threshold <= t reaching `review_target` of unsafe images caught, within `review_budget`."""
    pos = u[is_unsafe]
    finite = pos[torch.isfinite(pos)].double().sort(descending=True).values
    need = math.ceil(cfg.review_target * len(pos))
    if need == 0:
        return t, True
    r_target = float(finite[need - 1]) if need <= len(finite) else (float(finite[-1]) if len(finite) else t)
    met = need <= len(finite)
    # budget: at most review_budget of all calibration images in [r, t)
    band = u[(u < t) & torch.isfinite(u)].double().sort(descending=True).values
    max_review = math.floor(cfg.review_budget * len(u))
    r_budget = float(band[max_review - 1]) if 0 < max_review <= len(band) else (NEG_INF if max_review > 0 else t)
    r = max(r_target, r_budget) if max_review < len(band) else r_target
    met = met and r <= r_target
    return min(r, t), met
