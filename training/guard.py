"""Zero-shot guard: per domain, the calibration split decides how much of the prompted prediction
to keep against bare CLIP.

Candidates are logit blends ``w * zero_shot + (1 - w) * prompted`` for w in GUARD_WEIGHTS, on the
log-softmax of each (a per-image offset changes neither argmax): w = 0 is the prompted prediction,
w = 1 is zero-shot. Each domain takes the w with the best accuracy on its calibration split
(validation plus the pool images the training seed left unused; never test), ties to the larger w,
and keeps it only where it beats the largest w on calibration by a one-sided exact McNemar test at
GUARD_ALPHA (`choose_weight`): a domain leaves zero-shot only where calibration shows the prompts help.

Evaluation reports the rule as the `guarded` row (`guarded_seed`); export makes the same choice on
the same split (`training.decisions.fit_domain`) and records it in the bundle, whose decisions then
blend the two through `promptclip.decisions.guard_blend`: the service, the backlog and export score
a guarded domain alike, at the cost of one bare forward pass per image of that domain.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy.stats import binomtest
from torch import Tensor

from promptclip.decisions import guard_blend

from .config import GUARD_ALPHA, GUARD_WEIGHTS
from .runtime import RunContext
from .train import predict_logits, train_variant

log = logging.getLogger(__name__)

PROMPTED = "group_private"


def blend(zero_shot: Tensor, prompted: Tensor, w: float) -> Tensor:
    """(N, C) blended log-probabilities of (N, C) logits: w x zero-shot + (1 - w) x prompted, renormalised."""
    return guard_blend(prompted, zero_shot, w)


def choose_weight(zero_shot: Tensor, prompted: Tensor, labels: Tensor, weights: tuple[float, ...] = GUARD_WEIGHTS,
                  alpha: float = GUARD_ALPHA) -> tuple[float, dict[float, float], float | None]:
    """The blend weight for these (calibration) logits, every candidate's accuracy, and the p-value of its test.

    The most accurate candidate (ties to the larger weight) is kept only where it beats the largest
    weight (the one nearest zero-shot) on the images the two decide differently: a one-sided exact
    McNemar test (binomial on the discordant images) at `alpha`. Otherwise the largest weight: a
    32-image calibration split cannot tell a two-image lead from noise, and a domain should leave
    frozen CLIP only where its calibration images show the prompts help. alpha = 1 keeps the most
    accurate candidate whenever it leads.
    """
    if len(labels) == 0:
        return max(weights), {}, None
    hits = {w: blend(zero_shot, prompted, w).argmax(1) == labels for w in weights}
    acc = {w: float(h.float().mean()) for w, h in hits.items()}
    best, top = max(acc, key=lambda w: (acc[w], w)), max(weights)
    if best == top:
        return best, acc, None
    gain, loss = int((hits[best] & ~hits[top]).sum()), int((~hits[best] & hits[top]).sum())
    p = float(binomtest(gain, gain + loss, 0.5, alternative="greater").pvalue)
    return (best if p < alpha else top), acc, p


def guarded_seed(rc: RunContext, groups: list[list[str]], run_dir: Path,
                 keep: bool) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, dict]]:
    """group_private at rc.train.seed under the guard: test accuracy and per-image correctness per domain,
    and each domain's choice (weight, calibration accuracy of every candidate, calibration size)."""
    seed = rc.train.seed
    prompted = train_variant(rc, PROMPTED, groups, Path(run_dir) / "models" / f"{PROMPTED}-s{seed}")
    zero = train_variant(rc, "zero_shot", groups, Path(run_dir) / "models" / f"zero_shot-s{seed}")
    calib = {d.name: d.calibration(rc.split.shots, seed) for d in rc.data.domains}
    test = {d.name: d.test for d in rc.data.domains}
    cz, cp = (predict_logits(m, rc.cache, rc.data, calib, keep) for m in (zero, prompted))
    tz, tp = (predict_logits(m, rc.cache, rc.data, test, keep) for m in (zero, prompted))
    acc, correct, choice = {}, {}, {}
    for d in rc.data.tasks:
        w, cand, p = choose_weight(cz[d][0], cp[d][0], cz[d][1])
        if not cand:
            log.warning("%s: no calibration image for the zero-shot guard; using zero-shot", d)
        hit = (blend(tz[d][0], tp[d][0], w).argmax(1) == tz[d][1]).double().numpy()
        acc[d], correct[d] = float(hit.mean()), hit
        choice[d] = {"weight": w, "calibration_accuracy": {str(k): v for k, v in cand.items()},
                     "calibration_images": len(calib[d]), "p_value": p}
    return acc, correct, choice


def guard_applies(variants: list[str]) -> bool:
    """The guard needs both of the predictions it chooses between."""
    return PROMPTED in variants and "zero_shot" in variants
