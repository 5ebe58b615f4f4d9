"""Image features + a domain's text bank + its calibration -> scores, probabilities, decisions (DESIGN §11).

The one place the decision rule lives, as batched tensor work over a micro-batch: training's
evaluation, calibration and export, the service and the backlog scorer all call `score_batch`
then `decide_batch`; per-row Python only turns the batch's results into JSON (`Decisions.answers`).

Per image of a domain with C labels:

* ``score``: cosine similarity to each label embedding, (C,): the label prompt's text feature,
  blended with the label cache when the bundle has one (``multitask.label_embeddings``);
* ``softmax``: the closed-set softmax of ``logit_scale * score`` over the labels; in a domain whose
  bundle carries a zero-shot guard of weight ``w`` (`DomainBank.guard`), the renormalised blend
  ``w * log_softmax(zero-shot) + (1 - w) * log_softmax(prompted)``, where zero-shot scores the
  frozen tower's image feature against the frozen text tower's label features (`guard_blend`);
  the decision's top label is this softmax's largest;
* ``probability``: calibrated one-vs-rest: ``sigmoid(a * z + b)`` per label, where ``z`` is the
  log-probability of the label in a softmax over the labels *and* the domain's negative labels
  (NegLabel), or over the labels alone (`PLATT_INPUTS`); under a guard, the blended closed-set
  log-probability, plus the log label mass for the NegLabel basis;
* ``scope_score``: the domain's fitted scope model (`promptclip.scope`: Gaussian scores of the
  image tower's layer features and of the embedding, fitted on in-domain images only);
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

from .scope import ScopeBank, ScopeModel

NEG_INF = float("-inf")
TINY = 1e-30  # floor of a closed-set probability before its log (float32 softmax underflows to 0)
# Platt's input z per probability basis: the BatchScores field it reads. `neglabel`:
# log-probability among the labels and the negative labels (an image no label describes leaves
# its mass on the negatives); `closed_set`: among the labels alone (export picks it where the
# negatives swallow the unsafe images' mass, e.g. styles the frozen CLIP reads poorly).
PLATT_INPUTS = {"neglabel": "label_logp", "closed_set": "closed_logp"}
PROBABILITY_BASES = tuple(PLATT_INPUTS)


# ------------------------------------------------------------------------------------------ banks
@dataclass(frozen=True)
class DomainBank:
    """One domain's reference tensors and rule, built once per bundle load."""

    labels: Tensor  # (C, E) label embeddings: prompts through the text prompts, blended with the label cache
    negatives: Tensor  # (M, E) normalised negative label embeddings, the same prompts; M may be 0
    scope: ScopeModel | None  # fitted at export (promptclip.scope); None: always in scope
    rule: DecisionRule | None = None  # None: uncalibrated (closed-set softmax, threshold 0.5 from the labels)
    zero_shot: Tensor | None = None  # (C, E) the frozen text tower's label features; needed when guard > 0
    guard: float = 0.0  # weight of the zero-shot prediction in the label distribution (0: prompted only)
    lowpass: float = 0.0  # input low-pass of the prompted pass, in pixels (promptclip.lowpass; 0: none)

    def __post_init__(self) -> None:
        if not 0.0 <= self.guard <= 1.0:
            raise ValueError(f"zero-shot guard weight must be in [0, 1], got {self.guard}")
        if self.guard > 0 and (self.zero_shot is None or self.zero_shot.shape != self.labels.shape):
            raise ValueError("a zero-shot guard needs the (labels, embed_dim) zero-shot label features")


def _pad(rows: Sequence[Tensor], dim: int, device) -> tuple[Tensor, Tensor]:
    """Stack (n_i, E) tensors into (T, max n, E) zeros-padded, plus (T,) counts."""
    n = max([r.shape[0] for r in rows] + [1])
    out = torch.zeros(len(rows), n, dim, device=device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r.to(device, torch.float32)
    return out, torch.tensor([r.shape[0] for r in rows], device=device)


@dataclass(frozen=True)
class Banks:
    """Every served domain's banks and rules, padded so that a mixed batch is scored and decided at once."""

    labels: Tensor  # (T, Cmax, E)
    label_counts: Tensor  # (T,)
    negatives: Tensor  # (T, Mmax, E)
    negative_counts: Tensor  # (T,)
    zero_shot: Tensor  # (T, Cmax, E) zero-shot label features (zeros where a domain has no guard)
    guard: Tensor  # (T,) zero-shot guard weight per domain
    domains: tuple[DomainBank, ...]  # negatives, scope model and rule per domain, by row
    rules: RuleBank  # the rules as padded tensors
    scope: ScopeBank  # the scope models stacked over sources and domains

    @classmethod
    def stack(cls, banks: Sequence[DomainBank], device=None) -> Banks:
        device = device or banks[0].labels.device
        dim = banks[0].labels.shape[1]
        lab, lc = _pad([b.labels for b in banks], dim, device)
        neg, nc = _pad([b.negatives.reshape(-1, dim) for b in banks], dim, device)
        zs, _ = _pad([b.labels.new_zeros(b.labels.shape) if b.zero_shot is None else b.zero_shot for b in banks],
                     dim, device)
        guard = torch.tensor([b.guard for b in banks], dtype=torch.float32, device=device)
        rules = [b.rule or DecisionRule.uncalibrated(b.labels.shape[0]) for b in banks]
        return cls(lab, lc, neg, nc, zs, guard, tuple(banks), RuleBank.stack(rules, lab.shape[1], device),
                   ScopeBank.stack([b.scope for b in banks], device))

    def guarded(self, row: int) -> bool:
        """Domain `row` blends in zero-shot: scoring it needs the frozen tower's image features."""
        return self.domains[row].guard > 0

    def needs_bare(self, rows: Sequence[int]) -> bool:
        return self.any_guard and any(self.domains[r].guard > 0 for r in rows)

    @cached_property
    def any_guard(self) -> bool:
        return any(b.guard > 0 for b in self.domains)

    def lowpass_of(self, rows: Sequence[int]) -> list[float]:
        """The input low-pass of each row's domain (`ModelRunner.prompted`; 0: none)."""
        return [self.domains[r].lowpass for r in rows] if self.any_lowpass else [0.0] * len(rows)

    @cached_property
    def any_lowpass(self) -> bool:
        return any(b.lowpass > 0 for b in self.domains)


@dataclass
class BatchScores:
    """Raw scores of a batch, each row scored against its own domain (padded columns are invalid)."""

    cosine: Tensor  # (B, Cmax), 0 on padding
    softmax: Tensor  # (B, Cmax) closed-set, 0 on padding
    label_logp: Tensor  # (B, Cmax) log-probability over labels + negatives, -inf on padding
    label_mass: Tensor  # (B,) probability mass on the labels against the negatives (1 without negatives)
    scope: Tensor  # (B,) scope score under the domain's ScopeModel (+inf without one)
    counts: Tensor  # (B,) label count per row
    guarded: Tensor | None = None  # (B,) bool: softmax and label_logp blend in zero-shot (top is softmax's)

    def __post_init__(self) -> None:
        if self.guarded is None:
            self.guarded = torch.zeros_like(self.counts, dtype=torch.bool)

    @cached_property
    def closed_logp(self) -> Tensor:
        """(B, Cmax) log of the closed-set softmax, floored at TINY (computed once per batch)."""
        return self.softmax.clamp_min(TINY).log()

    def platt_input(self, basis: str) -> Tensor:
        """(B, Cmax) Platt's input z under `basis` (see PLATT_INPUTS)."""
        if basis not in PLATT_INPUTS:
            raise ValueError(f"unknown probability basis {basis!r}; known: {PROBABILITY_BASES}")
        return getattr(self, PLATT_INPUTS[basis])

    def select(self, idx: Tensor) -> BatchScores:
        """The rows `idx` of this batch."""
        return BatchScores(*(t.index_select(0, idx) for t in (self.cosine, self.softmax, self.label_logp,
                                                               self.label_mass, self.scope, self.counts,
                                                               self.guarded)))

    @property
    def top(self) -> Tensor:
        """(B,) the predicted label: the largest cosine, or the blended softmax's largest under a guard."""
        valid = _valid(self.counts, self.cosine.shape[1])
        key = torch.where(self.guarded[:, None], self.softmax, self.cosine)
        return key.masked_fill(~valid, NEG_INF).argmax(1)


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


def score_batch(feats: Tensor, rows: Tensor, banks: Banks, logit_scale: float,
                taps: Tensor | None = None, bare: Tensor | None = None) -> BatchScores:
    """Score a mixed-domain batch.

    Args:
        feats: (B, E) normalised image embeddings.
        rows: (B,) each sample's index into `banks`.
        banks: the served domains (`Banks.stack`).
        logit_scale: CLIP's temperature.
        taps: (B, layers, Wv) the image tower's layer means (`encode_image(..., taps=True)`);
            needed by scope models with layer signals.
        bare: (B, E) the frozen tower's normalised features (`ModelRunner.bare`); needed by rows whose
            domain has a zero-shot guard (`Banks.needs_bare`), ignored on the others.
    """
    feats = feats.float()
    counts = banks.label_counts.index_select(0, rows)
    cos = label_cosines(feats, banks.labels.index_select(0, rows), counts)  # (B, Cmax)
    z_lab = logit_scale * cos
    z_neg = negative_logsumexp(feats, rows, banks, logit_scale)
    scope = banks.scope.score(feats, None if taps is None else taps.float(), rows)
    log_all = torch.logaddexp(torch.logsumexp(z_lab, 1), z_neg).unsqueeze(1)  # (B, 1)
    label_logp = z_lab - log_all
    mass = torch.logsumexp(z_lab, 1, keepdim=True).sub(log_all).exp().squeeze(1)
    softmax = z_lab.softmax(1)
    w = banks.guard.index_select(0, rows)  # (B,)
    guarded = w > 0
    if bare is not None:
        zs = logit_scale * label_cosines(bare.float(), banks.zero_shot.index_select(0, rows), counts)
        mix = guard_blend(z_lab, zs, w[:, None], _valid(counts, cos.shape[1]))
        softmax = torch.where(guarded[:, None], mix.exp(), softmax)
        label_logp = torch.where(guarded[:, None], mix + mass.clamp_min(TINY).log()[:, None], label_logp)
    elif banks.any_guard and banks.needs_bare(rows.tolist()):
        raise ValueError("these rows' domains blend in zero-shot (a guarded bundle): score_batch needs `bare`")
    return BatchScores(cos.masked_fill(cos == NEG_INF, 0.0), softmax, label_logp, mass, scope, counts, guarded)


def guard_blend(prompted: Tensor, zero_shot: Tensor, w: Tensor | float, valid: Tensor | None = None) -> Tensor:
    """(B, C) log-probabilities: ``w * log_softmax(zero_shot) + (1 - w) * log_softmax(prompted)``,
    renormalised over the valid columns (-inf elsewhere). w = 0 is the prompted distribution, w = 1
    zero-shot's; a per-image offset changes no argmax, so training's guard (`training.guard`) picks w
    on argmax accuracy of exactly this."""
    if valid is None:
        valid = torch.ones_like(prompted, dtype=torch.bool)
    lp = prompted.log_softmax(1).masked_fill(~valid, 0.0)
    lz = zero_shot.log_softmax(1).masked_fill(~valid, 0.0)
    return (w * lz + (1 - w) * lp).masked_fill(~valid, NEG_INF).log_softmax(1)


def negative_logsumexp(feats: Tensor, rows: Tensor, banks: Banks, logit_scale: float) -> Tensor:
    """(B,) per sample, logsumexp of the scaled cosines to its own domain's negative labels (-inf without):
    one batched product over the padded negative bank, however many domains the batch mixes."""
    neg = banks.negatives.index_select(0, rows)  # (B, Mmax, E)
    z = logit_scale * torch.einsum("be,bme->bm", feats.to(neg.dtype), neg)
    return z.masked_fill(~_valid(banks.negative_counts.index_select(0, rows), z.shape[1]), NEG_INF).logsumexp(1)


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
        basis = decision.get("probability_basis", "neglabel")
        if basis not in PLATT_INPUTS:
            raise ValueError(f"unknown probability_basis {basis!r}; known: {PROBABILITY_BASES}")
        return cls(rules, review_threshold=float(decision["review_threshold"]),
                   scope_cut=float(NEG_INF if scope.get("cut") is None else scope["cut"]),
                   mass_cut=float(scope.get("mass_cut", 0.0)), basis=basis)

    @classmethod
    def uncalibrated(cls, n_labels: int) -> DecisionRule:
        """A rule that never flags (no label unsafe), for banks built without one."""
        return cls(tuple(LabelRule(str(i), False, 1.0, None) for i in range(n_labels)), legacy=True)

    @property
    def can_flag(self) -> bool:
        """Some unsafe label has a threshold a probability can reach."""
        return any(lab.unsafe and lab.threshold <= 1.0 for lab in self.labels)


def _platt(label: Any) -> tuple[float, float] | None:
    cal = getattr(label, "calibration", None)
    return (float(cal["a"]), float(cal["b"])) if cal else None


@dataclass(frozen=True)
class RuleBank:
    """Every domain's rule as padded tensors: (T, Cmax) per label, (T,) per domain."""

    a: Tensor  # (T, Cmax) Platt slope (0 where uncalibrated)
    b: Tensor  # (T, Cmax) Platt intercept
    calibrated: Tensor  # (T, Cmax) bool: probability is Platt's, else the closed-set softmax
    threshold: Tensor  # (T, Cmax) flag threshold (+inf on padding)
    unsafe: Tensor  # (T, Cmax) bool (False on padding)
    review_threshold: Tensor  # (T,) (+inf for legacy rules)
    scope_cut: Tensor  # (T,)
    mass_cut: Tensor  # (T,)
    closed_set: Tensor  # (T,) bool: Platt reads the closed-set log-probability
    legacy: Tensor  # (T,) bool

    @classmethod
    def stack(cls, rules: Sequence[DecisionRule], width: int, device) -> RuleBank:
        T = len(rules)
        a, b = torch.zeros(T, width, dtype=torch.float64), torch.zeros(T, width, dtype=torch.float64)
        cal, unsafe = torch.zeros(T, width, dtype=torch.bool), torch.zeros(T, width, dtype=torch.bool)
        thr = torch.full((T, width), math.inf, dtype=torch.float64)
        for t, rule in enumerate(rules):
            for c, lab in enumerate(rule.labels):
                thr[t, c], unsafe[t, c] = lab.threshold, lab.unsafe
                if lab.platt is not None and not rule.legacy:
                    a[t, c], b[t, c] = lab.platt
                    cal[t, c] = True

        def per_domain(f, dtype=torch.float64):
            return torch.tensor([f(r) for r in rules], dtype=dtype, device=device)

        return cls(a.to(device), b.to(device), cal.to(device), thr.to(device), unsafe.to(device),
                   per_domain(lambda r: math.inf if r.review_threshold is None else r.review_threshold),
                   per_domain(lambda r: r.scope_cut), per_domain(lambda r: r.mass_cut),
                   per_domain(lambda r: r.basis == "closed_set", torch.bool), per_domain(lambda r: r.legacy, torch.bool))


@dataclass
class Decisions:
    """A batch's decisions, each row under its own domain's rule."""

    scores: BatchScores
    rows: Tensor  # (B,) index into the banks
    probability: Tensor  # (B, Cmax) calibrated where the label is, else the closed-set softmax
    label_flagged: Tensor  # (B, Cmax) bool
    in_scope: Tensor  # (B,) bool
    flagged: Tensor  # (B,) bool
    needs_review: Tensor  # (B,) bool
    top: Tensor  # (B,) index of the highest-scoring label

    def answers(self, banks: Banks) -> list[dict[str, Any]]:
        """Plain Python per row: labels in the rule's order (label, score, softmax, probability,
        threshold, unsafe, flagged, calibrated), in_scope, scope_score, label_mass, top_label,
        flagged, needs_review. One host copy per field; the only per-row Python of the decision."""
        s = self.scores
        cols = [t.detach().cpu().tolist() for t in (s.cosine, s.softmax, self.probability, self.label_flagged)]
        flat = [t.detach().cpu().tolist() for t in (self.rows, s.counts, self.in_scope, s.scope, s.label_mass,
                                                    self.flagged, self.needs_review, self.top)]
        out = []
        for i, (r, c, ins, scope, mass, flag, review, top) in enumerate(zip(*flat, strict=True)):
            rule = banks.domains[r].rule or DecisionRule.uncalibrated(c)
            labels = [{"label": lab.name, "score": cos, "softmax": sm, "probability": p, "threshold": lab.threshold,
                       "unsafe": lab.unsafe, "flagged": hit, "calibrated": lab.platt is not None and not rule.legacy}
                      for lab, cos, sm, p, hit in zip(rule.labels, cols[0][i][:c], cols[1][i][:c], cols[2][i][:c],
                                                      cols[3][i][:c], strict=True)]
            out.append({"labels": labels, "in_scope": ins, "scope_score": scope, "label_mass": mass,
                        "top_label": rule.labels[top].name if ins else None, "flagged": flag, "needs_review": review})
        return out


def decide_batch(scores: BatchScores, rows: Tensor, banks: Banks, *, review_out_of_scope: bool = False,
                 review_margin: float = 0.1) -> Decisions:
    """The rule over a batch: `scores` from `score_batch(feats, rows, banks, ...)`.

    `review_out_of_scope` sends out-of-scope images to review; `review_margin` is the legacy rule's
    review band below each threshold.
    """
    rb = banks.rules
    a, b, cal = rb.a.index_select(0, rows), rb.b.index_select(0, rows), rb.calibrated.index_select(0, rows)
    thr, unsafe = rb.threshold.index_select(0, rows), rb.unsafe.index_select(0, rows)
    legacy = rb.legacy.index_select(0, rows)
    z = torch.where(rb.closed_set.index_select(0, rows)[:, None], scores.closed_logp, scores.label_logp).double()
    probs = torch.where(cal, torch.sigmoid(a * z.clamp_min(-1e4) + b), scores.softmax.double())  # (B, Cmax)
    in_scope = legacy | ((scores.scope.double() >= rb.scope_cut.index_select(0, rows))
                         & (scores.label_mass.double() >= rb.mass_cut.index_select(0, rows)))
    hits = unsafe & (probs >= thr) & in_scope[:, None]
    flagged = hits.any(1)
    worst = probs.masked_fill(~unsafe, 0.0).max(1).values  # largest unsafe probability (0 without one)
    margin_band = (unsafe & ~hits & (probs >= thr - review_margin)).any(1)  # legacy: any label in its band
    calibrated_review = ~flagged & ((in_scope & (worst >= rb.review_threshold.index_select(0, rows)))
                                    | (~in_scope & review_out_of_scope))
    review = torch.where(legacy, margin_band, calibrated_review)
    return Decisions(scores, rows, probs, hits, in_scope, flagged, review, scores.top)
