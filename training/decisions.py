"""Fit and measure each domain's decision rule at export time (DESIGN §11).

For a trained domain: its label embeddings, negative labels mined from open_clip's ImageNet
class names (the ones farthest from the domain's labels, encoded through the domain's own text
prompts), and its calibration image features as the scope bank. The rule is fitted on the
calibration split (`training.calibrate`); the manifest's rates come from the test split and the
OOD probe set, scored by the same `promptclip.decisions` code the service runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from torch import Tensor

from promptclip import Label, label_tokens
from promptclip.decisions import Banks, BatchScores, DecisionRule, DomainBank, decide, score_batch
from promptclip.multitask import MultiTaskCLIP, encode_prompted_texts

from .calibrate import FittedRule, cross_fit_scope, fit_rule, wilson
from .config import DecisionConfig
from .data import DomainData, ImageCache

log = logging.getLogger(__name__)


@torch.no_grad()
def image_features(model: MultiTaskCLIP, ti: int, images: Tensor, chunk: int = 256) -> Tensor:
    """(N, E) normalised features of preprocessed `images` (N, 3, H, W) under task `ti`'s vision prompts."""
    device = model.encoder.logit_scale.device
    vp = model.prompts.vision(model.tasks[ti])  # (depth, n, Wv)
    out = []
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].to(device)
        out.append(model.encoder.encode_image(x, vp.unsqueeze(0).expand(len(x), -1, -1, -1)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def mine_negatives(model: MultiTaskCLIP, ti: int, tokenizer, cfg: DecisionConfig) -> tuple[list[str], Tensor]:
    """The `cfg.negatives` ImageNet class names least similar to the domain's labels, and their (M, E) features."""
    task = model.tasks[ti]
    names = list(dict.fromkeys(IMAGENET_CLASSNAMES))
    tp = model.prompts.text(task)
    device = model.encoder.logit_scale.device
    tokens = label_tokens(tokenizer, [cfg.negative_template.format(n) for n in names], tp.shape[1]).to(device)
    feats = encode_prompted_texts(model.encoder, tokens, tp).float().cpu()  # (V, E)
    closeness = (feats @ model.text_features(task).float().cpu().T).max(1).values  # (V,)
    keep = closeness.argsort(stable=True)[: cfg.negatives].sort().values
    return [names[i] for i in keep.tolist()], feats[keep]


@dataclass
class DomainDecision:
    """What export writes for one domain: calibrated labels, the manifest's decision, negatives, bank, rates."""

    labels: list[Label]
    decision: dict
    negatives: dict
    bank: tuple[Tensor, Tensor]  # (K, E) fp16 calibration features, (K,) their labels
    rates: dict
    curves: dict  # raw scores for the plots


def _score(feats: Tensor, bank: DomainBank, scale: float) -> BatchScores:
    banks = Banks.stack([bank], device=torch.device("cpu"))
    return score_batch(feats, torch.zeros(len(feats), dtype=torch.long), banks, scale)


def _bank_rows(n: int, cap: int) -> Tensor:
    """Deterministic subset of at most `cap` calibration rows for the scope bank."""
    idx = torch.arange(n)
    return idx if n <= cap else idx[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:cap].sort().values]


@torch.no_grad()
def fit_domain(model: MultiTaskCLIP, ti: int, dom: DomainData, tokenizer, cache: ImageCache,
               calib: list[tuple[Path, int]], ood: dict[str, list[Image.Image]], cfg: DecisionConfig) -> DomainDecision:
    """Fit the rule on `calib` and measure it on the test split and the OOD probe set."""
    scale = float(model.encoder.logit_scale)
    names, neg = mine_negatives(model, ti, tokenizer, cfg)
    labels_f = model.text_features(model.tasks[ti]).float().cpu()
    cal_x = image_features(model, ti, cache.load([p for p, _ in calib], cache=False))
    y = torch.tensor([li for _, li in calib])
    rows = _bank_rows(len(cal_x), cfg.scope_bank)
    bank, bank_y = cal_x[rows].half(), y[rows]
    dbank = DomainBank.build(labels_f, neg, bank.float(), bank_y)  # the scope model the service fits
    unsafe = torch.tensor([lab.unsafe for lab in dom.labels])
    fitted = fit_rule(_score(cal_x, dbank, scale), cross_fit_scope(cal_x, y, rows), y, unsafe, cfg)
    fitted.decision["scope"]["bank_size"] = len(rows)
    labels = [replace(lab, threshold=fitted.threshold, calibration=cal)
              for lab, cal in zip(dom.labels, fitted.calibrations, strict=True)]
    rule = DecisionRule.from_manifest(labels, fitted.decision)
    test_x = image_features(model, ti, cache.load([p for p, _ in dom.test], cache=False))
    test_y = torch.tensor([li for _, li in dom.test])
    test = [decide(r, rule) for r in _score(test_x, dbank, scale).rows()]
    ood_dec = {kind: [decide(r, rule) for r in _score(image_features(model, ti, torch.stack(
        [cache.preprocess(im) for im in imgs])), dbank, scale).rows()] for kind, imgs in ood.items()}
    rates = decision_rates(test, test_y, unsafe, ood_dec)
    rates["calibration_targets_met"] = fitted.decision["targets_met"]
    _warn_unmet(dom.name, fitted, rates)
    return DomainDecision(labels, fitted.decision, {"template": cfg.negative_template, "names": names}, (bank, bank_y),
                          rates, {"test": test, "test_y": test_y.tolist(), "ood": ood_dec, "unsafe": unsafe.tolist(),
                                  "review_threshold": fitted.decision["review_threshold"],
                                  "threshold": fitted.threshold})


def decision_rates(test: list[dict], y: Tensor, unsafe: Tensor, ood: dict[str, list[dict]]) -> dict:
    """Test-split and OOD rates of the decisions, each with its 95% Wilson interval."""
    is_unsafe = unsafe[y].tolist()

    def count(items, key):
        return sum(bool(d[key]) for d in items)

    ben = [d for d, u in zip(test, is_unsafe, strict=True) if not u]
    uns = [d for d, u in zip(test, is_unsafe, strict=True) if u]
    caught = sum(d["flagged"] or d["needs_review"] for d in uns)
    pooled = [d for items in ood.values() for d in items]
    acc = sum(d["labels"][int(t)]["score"] == max(lab["score"] for lab in d["labels"]) for d, t in zip(
        test, y.tolist(), strict=True)) / max(1, len(test))
    return {
        "accuracy": round(acc, 4),
        "benign_false_flag": wilson(count(ben, "flagged"), len(ben)),
        "unsafe_recall": wilson(count(uns, "flagged"), len(uns)),
        "unsafe_caught": wilson(caught, len(uns)),
        "review_rate": wilson(count(test, "needs_review"), len(test)),
        "in_scope": wilson(count(test, "in_scope"), len(test)),
        "ood_flagged": wilson(count(pooled, "flagged"), len(pooled)),
        "ood_in_scope": wilson(count(pooled, "in_scope"), len(pooled)),
        "ood_flagged_by_kind": {k: wilson(count(v, "flagged"), len(v)) for k, v in ood.items()},
    }


def _warn_unmet(domain: str, fitted: FittedRule, rates: dict) -> None:
    met = fitted.decision["targets_met"]
    if not met["max_false_flag"]:
        log.warning("%s: too few benign calibration images for the false-flag target: nothing is flagged", domain)
    if not met["review_target"]:
        log.warning("%s: review target not met within the review budget (weak features); false flags kept at "
                    "target, test caught %.2f", domain, rates["unsafe_caught"]["rate"] or 0.0)
