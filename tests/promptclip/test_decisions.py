"""The decision module's invariants: mixed-domain batches equal each domain alone, the batched rule
equals the rule as written row by row, the rule's edges, and the scope model's distance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from promptclip import Label
from promptclip.decisions import Banks, BatchScores, DecisionRule, DomainBank, decide_batch, score_batch
from promptclip.scope import GaussianSignal, ScopeModel

E, W, LAYERS = 16, 12, 3


def _scope(g: torch.Generator) -> ScopeModel:
    sigs = []
    for src, d in (("layer2", W), ("final", E)):
        basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        sigs.append(GaussianSignal(src, torch.randn(1, d, generator=g), basis[:, :5],
                                   torch.rand(6, generator=g) + 0.5, float(torch.randn(1, generator=g)), 2.0))
    return ScopeModel(tuple(sigs), "mean")


def _rule(c: int, g: torch.Generator, legacy: bool = False) -> DecisionRule:
    labels = [Label(f"l{i}", "p", bool(i % 2 == 0), float(torch.rand(1, generator=g)) * 0.8 + 0.1,
                    {"a": float(torch.rand(1, generator=g)) + 0.5, "b": float(torch.randn(1, generator=g))})
              for i in range(c)]
    if legacy:
        return DecisionRule.from_manifest(labels, None)
    return DecisionRule.from_manifest(labels, {"review_threshold": 0.2, "probability_basis": "closed_set" if c == 5
                                               else "neglabel", "scope": {"cut": -1.0, "mass_cut": 0.05}})


def _bank(seed: int, c: int, m: int, scoped: bool = True, legacy: bool = False) -> DomainBank:
    g = torch.Generator().manual_seed(seed)
    return DomainBank(F.normalize(torch.randn(c, E, generator=g), dim=-1),
                      F.normalize(torch.randn(m, E, generator=g), dim=-1),
                      _scope(g) if scoped else None, _rule(c, g, legacy))


def _batch(n: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, E, generator=g), dim=-1), torch.randn(n, LAYERS, W, generator=g)


def test_mixed_domain_batch_equals_each_domain_alone():
    banks = [_bank(0, 3, 5), _bank(1, 5, 0), _bank(2, 2, 7, scoped=False), _bank(4, 4, 3, legacy=True)]
    feats, taps = _batch(11)
    rows = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 3, 3])
    stacked = Banks.stack(banks)
    mixed = decide_batch(score_batch(feats, rows, stacked, 30.0, taps), rows, stacked).answers(stacked)
    for i, r in enumerate(rows.tolist()):
        one, zero = Banks.stack([banks[r]]), torch.zeros(1, dtype=torch.long)
        alone = decide_batch(score_batch(feats[i:i + 1], zero, one, 30.0, taps[i:i + 1]), zero, one).answers(one)[0]
        assert len(mixed[i]["labels"]) == banks[r].labels.shape[0]
        for key in ("in_scope", "flagged", "needs_review", "top_label"):
            assert mixed[i][key] == alone[key], key
        for a, b in zip(mixed[i]["labels"], alone["labels"], strict=True):
            assert a["flagged"] == b["flagged"] and a["label"] == b["label"]
            assert math.isclose(a["probability"], b["probability"], rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(mixed[i]["scope_score"], alone["scope_score"], rel_tol=1e-5) or \
            mixed[i]["scope_score"] == alone["scope_score"]


def _reference(d_scores: dict, rule: DecisionRule, review_oos: bool, margin: float) -> dict:
    """The rule as DESIGN §11 writes it, one row in plain Python."""
    z = d_scores["closed_logp"] if rule.basis == "closed_set" else d_scores["label_logp"]
    probs = [1 / (1 + math.exp(-(lab.platt[0] * zi + lab.platt[1]))) if lab.platt and not rule.legacy else sm
             for lab, zi, sm in zip(rule.labels, z, d_scores["softmax"], strict=True)]
    in_scope = rule.legacy or (d_scores["scope"] >= rule.scope_cut and d_scores["label_mass"] >= rule.mass_cut)
    hits = [in_scope and lab.unsafe and p >= lab.threshold for lab, p in zip(rule.labels, probs, strict=True)]
    flagged = any(hits)
    worst = max([p for lab, p in zip(rule.labels, probs, strict=True) if lab.unsafe] + [0.0])
    if rule.legacy:
        review = any(lab.unsafe and not h and p >= lab.threshold - margin
                     for lab, p, h in zip(rule.labels, probs, hits, strict=True))
    else:
        review = not flagged and ((in_scope and worst >= rule.review_threshold) or (review_oos and not in_scope))
    return {"probs": probs, "hits": hits, "in_scope": in_scope, "flagged": flagged, "needs_review": review}


def test_batched_rule_equals_the_rule_row_by_row():
    banks = [_bank(s, c, m, legacy=s == 7) for s, c, m in ((5, 3, 4), (6, 5, 0), (7, 4, 2))]
    stacked = Banks.stack(banks)
    feats, taps = _batch(60, seed=9)
    rows = torch.arange(60) % 3
    scores = score_batch(feats, rows, stacked, 20.0, taps)
    for review_oos in (False, True):
        answers = decide_batch(scores, rows, stacked, review_out_of_scope=review_oos, review_margin=0.15).answers(
            stacked)
        for i, r in enumerate(rows.tolist()):
            c = banks[r].labels.shape[0]
            row = {k: getattr(scores, k)[i, :c].tolist() for k in ("softmax", "label_logp", "closed_logp")}
            row |= {"scope": float(scores.scope[i]), "label_mass": float(scores.label_mass[i])}
            ref = _reference(row, banks[r].rule, review_oos, 0.15)
            got = answers[i]
            assert (got["in_scope"], got["flagged"], got["needs_review"]) == (
                ref["in_scope"], ref["flagged"], ref["needs_review"])
            assert [lab["flagged"] for lab in got["labels"]] == ref["hits"]
            torch.testing.assert_close(torch.tensor([lab["probability"] for lab in got["labels"]], dtype=torch.float64),
                                       torch.tensor(ref["probs"], dtype=torch.float64), rtol=1e-6, atol=1e-9)
    assert any(a["flagged"] for a in answers) and any(not a["in_scope"] for a in answers)  # both edges exercised


def test_negatives_take_mass_and_scores_match_their_definitions():
    bank = _bank(0, 3, 4)
    feats, taps = _batch(2, seed=5)
    s = score_batch(feats, torch.zeros(2, dtype=torch.long), Banks.stack([bank]), 10.0, taps)
    cos, neg = feats[0] @ bank.labels.T, feats[0] @ bank.negatives.T
    torch.testing.assert_close(s.cosine[0], cos)
    torch.testing.assert_close(s.softmax[0], (10 * cos).softmax(0))
    log_all = torch.logsumexp(10 * torch.cat([cos, neg]), 0)
    torch.testing.assert_close(s.label_logp[0], 10 * cos - log_all)
    assert 0 < float(s.label_mass[0]) < 1
    assert math.isclose(float(s.label_mass[0]), float(torch.exp(torch.logsumexp(10 * cos, 0) - log_all)), rel_tol=1e-5)
    torch.testing.assert_close(s.scope, bank.scope.score(feats, taps))


def test_gaussian_signal_is_mahalanobis_in_its_subspace_plus_the_residual():
    g = torch.Generator().manual_seed(1)
    d, r = 6, 3
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    evals = torch.tensor([4.0, 2.0, 1.0, 0.3, 0.2, 0.1], dtype=torch.float64)
    mu = torch.randn(1, d, generator=g, dtype=torch.float64)
    x = torch.randn(5, d, generator=g, dtype=torch.float64)
    full = GaussianSignal("final", mu.float(), q.float(), torch.cat([evals.rsqrt(), torch.zeros(1, dtype=torch.float64)]).float())
    cov_inv = q @ torch.diag(1 / evals) @ q.T
    exact = -(((x - mu) @ cov_inv) * (x - mu)).sum(1) / d
    torch.testing.assert_close(full.raw_score(x.float()).double(), exact, rtol=1e-4, atol=1e-5)
    resid = float(evals[r:].mean())
    low = GaussianSignal("final", mu.float(), q[:, :r].float(),
                         torch.cat([evals[:r].rsqrt(), torch.tensor([resid ** -0.5], dtype=torch.float64)]).float())
    ppca = q @ torch.diag(torch.cat([evals[:r], torch.full((d - r,), resid, dtype=torch.float64)])) @ q.T
    exact = -(((x - mu) @ torch.linalg.inv(ppca)) * (x - mu)).sum(1) / d
    torch.testing.assert_close(low.raw_score(x.float()).double(), exact, rtol=1e-4, atol=1e-5)


def test_rule_edges_flag_at_threshold_review_in_band_and_never_flag_out_of_scope():
    labels = [Label("knife", "k", True, 0.6, {"a": 1.0, "b": 0.0}), Label("pill", "p", True, 0.6, {"a": 1.0, "b": 0.0}),
              Label("tree", "t", False, 0.6, {"a": 1.0, "b": 0.0})]
    rule = DecisionRule.from_manifest(labels, {"review_threshold": 0.3, "scope": {"cut": -1.0}})
    bank = DomainBank(torch.eye(3, E), torch.zeros(0, E), None, rule)
    banks = Banks.stack([bank])

    def logit(p):
        return math.log(p / (1 - p))

    cases = [([0.6001, 0.1, 0.1], 0.0), ([0.59, 0.4, 0.1], 0.0), ([0.2, 0.29, 0.9], 0.0), ([0.99, 0.1, 0.1], -1.5)]
    z = torch.tensor([[logit(p) for p in ps] for ps, _ in cases])
    n = len(cases)
    scores = BatchScores(torch.tensor([[0.3, 0.2, 0.1]] * n), torch.tensor([[0.5, 0.3, 0.2]] * n), z, torch.ones(n),
                         torch.tensor([s for _, s in cases]), torch.full((n,), 3))
    rows = torch.zeros(n, dtype=torch.long)
    d = decide_batch(scores, rows, banks).answers(banks)
    assert d[0]["flagged"] and not d[0]["needs_review"] and d[0]["labels"][0]["flagged"] and d[0]["top_label"] == "knife"
    assert math.isclose(d[0]["labels"][0]["probability"], 0.6001, rel_tol=1e-5) and d[0]["labels"][0]["calibrated"]
    assert not d[1]["flagged"] and d[1]["needs_review"]
    assert not d[2]["flagged"] and not d[2]["needs_review"]  # benign label high: no flag, no review
    out = d[3]
    assert not out["in_scope"] and not out["flagged"] and out["top_label"] is None and not out["needs_review"]
    assert not any(lab["flagged"] for lab in out["labels"])
    assert decide_batch(scores, rows, banks, review_out_of_scope=True).answers(banks)[3]["needs_review"]
    assert rule.can_flag and not DecisionRule.from_manifest(
        [Label("a", "a", True, 1.000001), Label("b", "b", False, 0.5)], {"review_threshold": 1.0}).can_flag
