"""The decision module's invariants: mixed-domain scoring equals per-domain scoring, the rule's edges."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from promptclip import Label
from promptclip.decisions import Banks, DecisionRule, DomainBank, ScopeModel, decide, score_batch


def _bank(seed: int, c: int, m: int, k: int, e: int = 16) -> DomainBank:
    g = torch.Generator().manual_seed(seed)
    return DomainBank.build(F.normalize(torch.randn(c, e, generator=g), dim=-1),
                            F.normalize(torch.randn(m, e, generator=g), dim=-1),
                            torch.randn(k, e, generator=g), torch.arange(k) % c)


def test_mixed_domain_batch_equals_each_domain_alone():
    banks = [_bank(0, 3, 5, 12), _bank(1, 5, 0, 20), _bank(2, 2, 7, 0)]
    feats = F.normalize(torch.randn(9, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    rows = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2])
    mixed = score_batch(feats, rows, Banks.stack(banks), 30.0).rows()
    for i, r in enumerate(rows.tolist()):
        alone = score_batch(feats[i:i + 1], torch.zeros(1, dtype=torch.long), Banks.stack([banks[r]]), 30.0).rows()[0]
        assert len(mixed[i]["cosine"]) == banks[r].labels.shape[0]
        for key in ("cosine", "softmax", "label_logp"):
            torch.testing.assert_close(torch.tensor(mixed[i][key]), torch.tensor(alone[key]), rtol=1e-5, atol=1e-6)
        assert math.isclose(mixed[i]["label_mass"], alone["label_mass"], rel_tol=1e-5)
        assert mixed[i]["scope"] == alone["scope"] or math.isclose(mixed[i]["scope"], alone["scope"], rel_tol=1e-5)


def test_negatives_take_mass_and_scores_match_their_definitions():
    bank = _bank(0, 3, 4, 12)
    feats = F.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    row = score_batch(feats, torch.zeros(2, dtype=torch.long), Banks.stack([bank]), 10.0).rows()[0]
    cos = feats[0] @ bank.labels.T
    neg = feats[0] @ bank.negatives.T
    torch.testing.assert_close(torch.tensor(row["cosine"]), cos)
    torch.testing.assert_close(torch.tensor(row["softmax"]), (10 * cos).softmax(0))
    log_all = torch.logsumexp(10 * torch.cat([cos, neg]), 0)
    torch.testing.assert_close(torch.tensor(row["label_logp"]), 10 * cos - log_all)
    assert 0 < row["label_mass"] < 1
    assert math.isclose(row["label_mass"], float(torch.exp(torch.logsumexp(10 * cos, 0) - log_all)), rel_tol=1e-5)


def test_scope_model_scores_the_calibration_classes_above_far_points():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(90) % 3
    x = means[y] + 0.3 * torch.randn(90, 8, generator=g)
    model = ScopeModel.fit(x, y)
    near = model.score(means + 0.3 * torch.randn(3, 8, generator=g))
    far = model.score(torch.randn(3, 8, generator=g) * 3 + 10)
    assert near.min() > far.max()
    assert ScopeModel.fit(x[:3], y[:3]) is None  # too few rows per class to estimate a covariance


def _rule(review: float = 0.3, cut: float = -1.0) -> DecisionRule:
    labels = [Label("knife", "k", True, 0.6, {"a": 1.0, "b": 0.0}), Label("pill", "p", True, 0.6, {"a": 1.0, "b": 0.0}),
              Label("tree", "t", False, 0.6, {"a": 1.0, "b": 0.0})]
    return DecisionRule.from_manifest(labels, {"review_threshold": review, "scope": {"cut": cut}})


def _row(logits: list[float], scope: float = 0.0, cosine=(0.3, 0.2, 0.1)) -> dict:
    # probability = sigmoid(label_logp) with a = 1, b = 0, so logit(p) is given directly
    return {"cosine": list(cosine), "softmax": [0.5, 0.3, 0.2], "label_logp": logits, "label_mass": 1.0,
            "scope": scope}


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_rule_flags_at_threshold_reviews_in_band_and_never_flags_out_of_scope():
    rule = _rule()
    d = decide(_row([_logit(0.6), _logit(0.1), _logit(0.1)]), rule)
    assert d["flagged"] and not d["needs_review"] and d["labels"][0]["flagged"] and d["top_label"] == "knife"
    assert math.isclose(d["labels"][0]["probability"], 0.6) and d["labels"][0]["calibrated"]
    d = decide(_row([_logit(0.59), _logit(0.4), _logit(0.1)]), rule)
    assert not d["flagged"] and d["needs_review"]
    d = decide(_row([_logit(0.2), _logit(0.29), _logit(0.9)]), rule)  # benign label high: no flag, no review
    assert not d["flagged"] and not d["needs_review"]
    out = decide(_row([_logit(0.99), _logit(0.1), _logit(0.1)], scope=-1.5), rule)
    assert not out["in_scope"] and not out["flagged"] and out["top_label"] is None and not out["needs_review"]
    assert not any(lab["flagged"] for lab in out["labels"])
    assert decide(_row([_logit(0.99), _logit(0.1), _logit(0.1)], scope=-1.5), rule, review_out_of_scope=True)[
        "needs_review"]
