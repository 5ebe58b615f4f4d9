"""Fit a domain's scope model on its own in-domain images (DESIGN §11); never on OOD images.

Each signal (`promptclip.scope`) is a Gaussian over one image feature: a Ledoit-Wolf shrunk
covariance, kept as its top-r principal directions plus the mean variance outside them (ViM's
residual). Every signal is standardised by the median and MAD of its *cross-fitted* calibration
scores (each image scored by a Gaussian fitted without its fold), and the combined score of those
same cross-fitted images is what the conformal cut is taken on, so the cut keeps its share of
fresh in-domain images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from promptclip.scope import GaussianSignal, ScopeModel, combine_z, signal_input

MIN_ROWS = 8  # fewer in-domain images than this: no scope model (every image in scope), said in the summary


def ledoit_wolf(x: Tensor) -> Tensor:
    """(D, D) Ledoit-Wolf shrunk covariance of centred rows x (N, D), float64.

    Kept in torch on purpose: scikit-learn's `sklearn.covariance.ledoit_wolf(x, assume_centered=True)`
    gives the same shrinkage and covariance to ~1e-15 (tests/training/test_numerics.py), but those
    last-bit differences flip the sign of some eigenvectors, and so change the bytes of the stored
    basis (the scores are unchanged: they use squared projections).
    """
    n, p = x.shape
    cov = x.T @ x / n
    mu = cov.diagonal().mean()
    eye = torch.eye(p, dtype=x.dtype)
    d2 = ((cov - mu * eye) ** 2).sum()
    b2 = ((x ** 2).sum(1) ** 2).sum() / n ** 2 - (cov ** 2).sum() / n
    shrink = float(min(b2, d2) / d2) if d2 > 0 else 1.0
    return (1 - shrink) * cov + shrink * mu * eye


def fit_gaussian(source: str, x: Tensor, rank: int) -> GaussianSignal:
    """One signal's Gaussian over rows x (N, D): mean, top-`rank` directions, residual variance."""
    x = x.double()
    mean = x.mean(0, keepdim=True)  # (1, D)
    evals, evecs = torch.linalg.eigh(ledoit_wolf(x - mean))  # ascending
    evals = evals.flip(0).clamp_min(float(evals.max()) * 1e-6 + 1e-12)
    evecs = evecs.flip(1)
    r = min(rank, x.shape[1])
    resid = float(evals[r:].mean()) if r < x.shape[1] else 1.0
    inv_sd = torch.cat([evals[:r].rsqrt(), torch.tensor([resid ** -0.5 if r < x.shape[1] else 0.0],
                                                        dtype=torch.float64)])
    return GaussianSignal(source, mean.float(), evecs[:, :r].float(), inv_sd.float())


def _standardised(signal: GaussianSignal, cross: Tensor) -> GaussianSignal:
    center = float(cross.median())
    spread = float((cross - center).abs().median()) or float(cross.std()) or 1.0
    return GaussianSignal(signal.source, signal.means, signal.basis, signal.inv_sd, center, spread)


def fit_scope(feats: Tensor, taps: Tensor, sources: list[str], combine: str, rank: int,
              folds: int = 4) -> tuple[ScopeModel | None, Tensor]:
    """The scope model of a domain's in-domain images, and their (N,) cross-fitted combined scores.

    Args:
        feats: (N, E) normalised embeddings; taps: (N, layers, Wv) layer means (same images).
        sources: signals to fit ('final', 'layer1', ...); combine: 'mean' | 'min'; rank: top directions kept.
    Returns:
        (None, +inf scores) when there are fewer than MIN_ROWS images.
    """
    n = len(feats)
    if n < MIN_ROWS or not sources:
        return None, torch.full((n,), math.inf)
    fold = torch.arange(n) % folds
    signals, cross = [], []
    for src in sources:
        x = signal_input(src, feats, taps).float()
        # the stored parameters are fp16: score with what the service will hold
        full = _rounded(fit_gaussian(src, x, rank))
        cf = torch.empty(n)
        for f in range(folds):
            cf[fold == f] = _rounded(fit_gaussian(src, x[fold != f], rank)).raw_score(x[fold == f])
        signals.append(_standardised(full, cf))
        cross.append((cf - signals[-1].center) / signals[-1].spread)
    model = ScopeModel(tuple(signals), combine)
    return model, combine_z(torch.stack(cross, 1), combine)


def _rounded(s: GaussianSignal) -> GaussianSignal:
    return GaussianSignal(s.source, s.means.half().float(), s.basis.half().float(), s.inv_sd, s.center, s.spread)
