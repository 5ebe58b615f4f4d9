"""Zero-shot guard, measured in evaluation: per domain, the calibration split decides how much of
the prompted prediction to keep against bare CLIP.

Candidates are logit blends ``w * zero_shot + (1 - w) * prompted`` for w in GUARD_WEIGHTS, on the
log-softmax of each (a per-image offset changes neither argmax): w = 0 is the prompted prediction,
w = 1 is zero-shot. Each domain takes the w with the best accuracy on its calibration split
(validation plus the pool images the training seed left unused; never test). Ties go to the larger
w, so a domain leaves zero-shot only where calibration says the prompts help. The bare image
features zero-shot needs are computed here, in evaluation; bundles and serving are unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch import Tensor

from .runtime import RunContext
from .train import predict_logits, train_variant

log = logging.getLogger(__name__)

GUARD_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of zero-shot in the blend
PROMPTED = "group_private"


def blend(zero_shot: Tensor, prompted: Tensor, w: float) -> Tensor:
    """(N, C) blended log-probabilities: w x zero-shot + (1 - w) x prompted."""
    return w * zero_shot.log_softmax(-1) + (1 - w) * prompted.log_softmax(-1)


def choose_weight(zero_shot: Tensor, prompted: Tensor, labels: Tensor,
                  weights: tuple[float, ...] = GUARD_WEIGHTS) -> tuple[float, dict[float, float]]:
    """The blend weight with the best accuracy on these (calibration) logits, ties to the larger weight,
    and every candidate's accuracy."""
    if len(labels) == 0:
        return max(weights), {}
    acc = {w: float((blend(zero_shot, prompted, w).argmax(1) == labels).float().mean()) for w in weights}
    return max(acc, key=lambda w: (acc[w], w)), acc


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
        w, cand = choose_weight(cz[d][0], cp[d][0], cz[d][1])
        if not cand:
            log.warning("%s: no calibration image for the zero-shot guard; using zero-shot", d)
        hit = (blend(tz[d][0], tp[d][0], w).argmax(1) == tz[d][1]).double().numpy()
        acc[d], correct[d] = float(hit.mean()), hit
        choice[d] = {"weight": w, "calibration_accuracy": {str(k): v for k, v in cand.items()},
                     "calibration_images": len(calib[d])}
    return acc, correct, choice


def guard_applies(variants: list[str]) -> bool:
    """The guard needs both of the predictions it chooses between."""
    return PROMPTED in variants and "zero_shot" in variants
