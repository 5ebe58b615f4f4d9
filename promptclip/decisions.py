"""Image features + a domain's text bank + its calibration -> scores, probabilities, decisions (DESIGN §11).

The one place the decision rule lives: training's evaluation and export, the service and the
backlog scorer all call it.

Per image of a domain with C labels:

* ``score``: cosine similarity to each label embedding, (C,): the label prompt's text feature,
  blended with the label cache when the bundle has one (``multitask.label_embeddings``);
* ``softmax``: the closed-set softmax of ``logit_scale * score`` over the labels;
* ``probability``: calibrated one-vs-rest: ``sigmoid(a * z + b)`` per label, where ``z`` is the
  log-probability of the label in a softmax over the labels *and* the domain's negative labels
  (NegLabel), so that an image none of the labels describe puts its mass on the negatives;
* ``scope_score``: minus the Mahalanobis distance (squared, per dimension) of the image feature
  to the nearest class mean of the domain's calibration images (the bundle's ``scope.bank`` and
  ``scope.labels``), with one Ledoit-Wolf shrunk covariance shared by the classes: an
  in-distribution score fitted without OOD data (Lee et al., 2018);
* ``label_mass``: the probability mass the labels keep against the negatives (NegLabel's score).

Rule: out of scope when ``scope_score`` or ``label_mass`` is below its cut. ``flagged`` = in scope
and an unsafe label's probability at or above its threshold. ``needs_review`` = not flagged, in
scope, and the largest unsafe probability at or above the review threshold; or out of scope
when the caller asks for out-of-scope review.

Bundles written before calibration existed carry no ``decision`` in their manifest: they keep
the old rule (closed-set softmax against each label's threshold, review within a margin below
it, everything in scope).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

NEG_INF = float("-inf")
TINY = 1e-30  # floor of a closed-set probability before its log (float32 softmax underflows to 0)
# Platt's input z per probability basis: the BatchScores field (and row key) it reads. `neglabel`:
# log-probability among the labels and the negative labels (an image no label describes leaves
# its mass on the negatives); `closed_set`: among the labels alone (export picks it where the
# negatives swallow the unsafe images' mass, e.g. styles the frozen CLIP reads poorly).
PLATT_INPUTS = {"neglabel": "label_logp", "closed_set": "closed_logp"}
PROBABILITY_BASES = tuple(PLATT_INPUTS)


# ------------------------------------------------------------------------------------------ banks
@dataclass(frozen=True)
class ScopeModel:
    """Class means and a shared whitening of a domain's calibration features: d^2 = |W f - W mu_c|^2."""

    whiten: Tensor  # (E, E)
    means: Tensor  # (C', E) whitened class means

    @classmethod
    def fit(cls, feats: Tensor, labels: Tensor) -> ScopeModel | None:
        """Ledoit-Wolf shrunk covariance of the class-centred features (None without enough rows)."""
        classes = labels.unique()
        if len(feats) < 2 * len(classes) or len(classes) == 0:
            return None
        x = feats.double()
        means = torch.stack([x[labels == c].mean(0) for c in classes])  # (C', E)
        centred = x - means[torch.searchsorted(classes, labels)]
        n, p = centred.shape
        cov = centred.T @ centred / n
        mu = cov.diagonal().mean()
        d2 = ((cov - mu * torch.eye(p, dtype=x.dtype)) ** 2).sum()
        b2 = ((centred ** 2).sum(1) ** 2).sum() / n ** 2 - (cov ** 2).sum() / n
        shrink = float(min(b2, d2) / d2) if d2 > 0 else 1.0
        cov = (1 - shrink) * cov + shrink * mu * torch.eye(p, dtype=x.dtype)
        evals, evecs = torch.linalg.eigh(cov)
        whiten = (evecs / evals.clamp(min=1e-12).sqrt()).T  # (E, E): W cov W^T = I
        return cls(whiten.float(), (means @ whiten.T).float())

    def score(self, feats: Tensor) -> Tensor:
        """(N,) minus the squared whitened distance to the nearest class mean, per dimension."""
        g = feats.float() @ self.whiten.to(feats.device).T  # (N, E)
        d2 = torch.cdist(g, self.means.to(feats.device)).pow(2).min(1).values
        return -d2 / g.shape[1]


@dataclass(frozen=True)
class DomainBank:
    """One domain's reference tensors, built once per bundle load."""

    labels: Tensor  # (C, E) label embeddings: prompts through the text prompts, blended with the label cache
    negatives: Tensor  # (M, E) normalised negative label embeddings, the same prompts; M may be 0
    scope: ScopeModel | None  # fitted on the calibration features; None: always in scope

    @classmethod
    def build(cls, labels: Tensor, negatives: Tensor, scope_feats: Tensor, scope_labels: Tensor) -> DomainBank:
        """Fit the scope model on (K, E) calibration features and their (K,) label indices (K may be 0)."""
        model = ScopeModel.fit(scope_feats.float().cpu(), scope_labels.cpu())
        if model is not None:
            model = ScopeModel(model.whiten.to(labels.device), model.means.to(labels.device))
        return cls(labels.float(), negatives.float(), model)


def _pad(rows: Sequence[Tensor], dim: int, device) -> tuple[Tensor, Tensor]:
    """Stack (n_i, E) tensors into (T, max n, E) zeros-padded, plus (T,) counts."""
    n = max([r.shape[0] for r in rows] + [1])
    out = torch.zeros(len(rows), n, dim, device=device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r.to(device, torch.float32)
    return out, torch.tensor([r.shape[0] for r in rows], device=device)


@dataclass(frozen=True)
class Banks:
    """Every served domain's banks: label embeddings padded so that a mixed batch is scored at once."""

    labels: Tensor  # (T, Cmax, E)
    label_counts: Tensor  # (T,)
    domains: tuple[DomainBank, ...]  # negatives and scope model per domain, by row

    @classmethod
    def stack(cls, banks: Sequence[DomainBank], device=None) -> Banks:
        device = device or banks[0].labels.device
        lab, lc = _pad([b.labels for b in banks], banks[0].labels.shape[1], device)
        return cls(lab, lc, tuple(banks))


@dataclass
class BatchScores:
    """Raw scores of a batch, each row scored against its own domain (padded columns are invalid)."""

    cosine: Tensor  # (B, Cmax)
    softmax: Tensor  # (B, Cmax) closed-set, 0 on padding
    label_logp: Tensor  # (B, Cmax) log-probability over labels + negatives, -inf on padding
    label_mass: Tensor  # (B,) probability mass on the labels against the negatives (1 without negatives)
    scope: Tensor  # (B,) scope score under the domain's ScopeModel (+inf without a scope bank)
    counts: Tensor  # (B,) label count per row

    @cached_property
    def closed_logp(self) -> Tensor:
        """(B, Cmax) log of the closed-set softmax, floored at TINY (computed once per batch)."""
        return self.softmax.clamp_min(TINY).log()

    def platt_input(self, basis: str) -> Tensor:
        """(B, Cmax) Platt's input z under `basis` (see PLATT_INPUTS)."""
        if basis not in PLATT_INPUTS:
            raise ValueError(f"unknown probability basis {basis!r}; known: {PROBABILITY_BASES}")
        return getattr(self, PLATT_INPUTS[basis])

    def row(self, i: int) -> dict[str, Any]:
        """Plain Python values of row i, trimmed to its labels."""
        c = int(self.counts[i])
        return {"cosine": self.cosine[i, :c].tolist(), "softmax": self.softmax[i, :c].tolist(),
                "label_logp": self.label_logp[i, :c].tolist(), "closed_logp": self.closed_logp[i, :c].tolist(),
                "label_mass": float(self.label_mass[i]), "scope": float(self.scope[i])}

    def rows(self) -> list[dict[str, Any]]:
        cpu = BatchScores(*(t.detach().float().cpu() for t in (self.cosine, self.softmax, self.label_logp,
                                                               self.label_mass, self.scope)), self.counts.cpu())
        return [cpu.row(i) for i in range(cpu.cosine.shape[0])]


def _valid(counts: Tensor, width: int) -> Tensor:
    return torch.arange(width, device=counts.device)[None, :] < counts[:, None]  # (B, width)


def label_cosines(feats: Tensor, labels: Tensor, counts: Tensor) -> Tensor:
    """(B, Cmax) cosine of each image to its own domain's labels; -inf past a domain's label count.

    Args:
        feats: (B, E) normalised image features.
        labels: (B, Cmax, E) label embeddings of each sample's domain (`multitask.label_embeddings`).
        counts: (B,) labels per sample's domain.
    """
    cos = torch.einsum("be,bce->bc", feats.to(labels.dtype), labels)
    return cos.masked_fill(~_valid(counts, cos.shape[1]), NEG_INF)


def score_batch(feats: Tensor, rows: Tensor, banks: Banks, logit_scale: float) -> BatchScores:
    """Score a mixed-domain batch: `feats` (B, E) normalised, `rows` (B,) each sample's index into `banks`."""
    feats = feats.float()
    counts = banks.label_counts.index_select(0, rows)
    cos = label_cosines(feats, banks.labels.index_select(0, rows), counts)  # (B, Cmax)
    z_lab = logit_scale * cos
    z_neg, scope = per_domain_scores(feats, rows, banks, logit_scale)
    log_all = torch.logaddexp(torch.logsumexp(z_lab, 1), z_neg).unsqueeze(1)  # (B, 1)
    label_logp = z_lab - log_all
    mass = torch.logsumexp(z_lab, 1, keepdim=True).sub(log_all).exp().squeeze(1)
    return BatchScores(cos.masked_fill(cos == NEG_INF, 0.0), z_lab.softmax(1), label_logp, mass, scope, counts)


def per_domain_scores(feats: Tensor, rows: Tensor, banks: Banks, logit_scale: float) -> tuple[Tensor, Tensor]:
    """Per sample, under its own domain: logsumexp of the scaled negative-label cosines (-inf without
    negatives) and the scope score (+inf without a scope model), each (B,).

    One matrix product per distinct domain in the batch, not per sample.
    """
    z_neg = torch.full((feats.shape[0],), NEG_INF, device=feats.device)
    scope = torch.full((feats.shape[0],), math.inf, device=feats.device)
    for r in rows.unique().tolist():
        bank = banks.domains[r]
        idx = (rows == r).nonzero().flatten()
        f = feats.index_select(0, idx)  # (n, E)
        if bank.negatives.shape[0]:
            z_neg[idx] = torch.logsumexp(logit_scale * (f @ bank.negatives.T), 1)
        if bank.scope is not None:
            scope[idx] = bank.scope.score(f)
    return z_neg, scope


# ------------------------------------------------------------------------------------------ rule
@dataclass(frozen=True)
class LabelRule:
    name: str
    unsafe: bool
    threshold: float  # flag at or above this probability
    platt: tuple[float, float] | None  # (a, b): probability = sigmoid(a * z + b) (`PLATT_INPUTS`); None: uncalibrated


@dataclass(frozen=True)
class DecisionRule:
    """A domain's decision rule, read from its manifest (see `from_manifest`)."""

    labels: tuple[LabelRule, ...]
    review_threshold: float | None = None  # None: legacy margin band below each threshold
    scope_cut: float = NEG_INF  # out of scope below this scope_score
    mass_cut: float = 0.0  # out of scope below this label_mass
    legacy: bool = False  # a bundle from before calibration: closed-set softmax, margin review, all in scope
    basis: str = "neglabel"  # Platt's input z: log-probability among labels + negatives, or among labels only

    @classmethod
    def from_manifest(cls, labels: Sequence[Any], decision: dict[str, Any] | None) -> DecisionRule:
        """`labels`: objects with name, unsafe, threshold and optional calibration {"a", "b"}."""
        rules = tuple(LabelRule(lab.name, bool(lab.unsafe), float(lab.threshold), _platt(lab)) for lab in labels)
        if not decision:
            return cls(rules, legacy=True)
        scope = decision.get("scope", {})
        return cls(rules, review_threshold=float(decision["review_threshold"]),
                   scope_cut=float(NEG_INF if scope.get("cut") is None else scope["cut"]),
                   mass_cut=float(scope.get("mass_cut", 0.0)), basis=decision.get("probability_basis", "neglabel"))


def _platt(label: Any) -> tuple[float, float] | None:
    cal = getattr(label, "calibration", None)
    return (float(cal["a"]), float(cal["b"])) if cal else None


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def probabilities(row: dict[str, Any], rule: DecisionRule) -> list[float]:
    """Per-label probability: calibrated where the label has Platt parameters, else the closed-set softmax."""
    zs = row[PLATT_INPUTS[rule.basis]]
    out = []
    for lab, z, p in zip(rule.labels, zs, row["softmax"], strict=True):
        out.append(_sigmoid(lab.platt[0] * z + lab.platt[1]) if lab.platt and not rule.legacy else p)
    return out


def decide(row: dict[str, Any], rule: DecisionRule, *, review_out_of_scope: bool = False,
           review_margin: float = 0.1) -> dict[str, Any]:
    """One image's decision from its scores row (`BatchScores.row`).

    Returns labels in the rule's order (each: label, score, softmax, probability, threshold,
    unsafe, flagged, calibrated), plus in_scope, scope_score, label_mass, top_label, flagged,
    needs_review.
    """
    probs = probabilities(row, rule)
    in_scope = rule.legacy or (row["scope"] >= rule.scope_cut and row["label_mass"] >= rule.mass_cut)
    labels, flagged, review = [], False, False
    worst = 0.0  # largest unsafe probability
    for lab, s, sm, p in zip(rule.labels, row["cosine"], row["softmax"], probs, strict=True):
        hit = in_scope and lab.unsafe and p >= lab.threshold
        flagged |= hit
        if lab.unsafe:
            worst = max(worst, p)
            if rule.legacy:
                review |= not hit and p >= lab.threshold - review_margin
        labels.append({"label": lab.name, "score": s, "softmax": sm, "probability": p, "threshold": lab.threshold,
                       "unsafe": lab.unsafe, "flagged": hit, "calibrated": lab.platt is not None and not rule.legacy})
    if not rule.legacy:  # the legacy rule may flag one label and send another to review
        review = not flagged and ((in_scope and worst >= rule.review_threshold)
                                  or (review_out_of_scope and not in_scope))
    top = max(range(len(labels)), key=lambda i: row["cosine"][i])
    return {"labels": labels, "in_scope": in_scope, "scope_score": row["scope"], "label_mass": row["label_mass"],
            "top_label": labels[top]["label"] if in_scope else None, "flagged": flagged, "needs_review": review}
