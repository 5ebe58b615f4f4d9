"""Fit and measure each domain's decision rule at export time (DESIGN §11).

For a trained domain: its label embeddings, negative labels mined from open_clip's ImageNet
class names (the ones farthest from the domain's labels, encoded through the domain's own text
prompts), and a scope model fitted on its in-domain images (`training.scope`). The rule is fitted
on the calibration split (`training.calibrate`); the manifest's rates come from the test split and
the OOD probe set, decided by the same `promptclip.decisions` code the service runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from torch import Tensor

from promptclip import Bundle, Label, label_tokens
from promptclip.bundle import stored_form
from promptclip.decisions import Banks, DecisionRule, DomainBank, score_batch
from promptclip.multitask import MultiTaskCLIP, encode_prompted_texts
from promptclip.runner import ModelRunner
from promptclip.runner import decide_features as runner_decide

from .calibrate import FittedRule, fit_rule, wilson
from .config import DecisionConfig
from .data import DomainData, ImageCache
from .scope import fit_scope

log = logging.getLogger(__name__)


@torch.no_grad()
def image_features(model: MultiTaskCLIP, ti: int, images: Tensor, chunk: int = 256) -> Tensor:
    """(N, E) normalised embeddings of preprocessed `images` (N, 3, H, W) under task `ti`'s vision prompts."""
    return encode_images(model, ti, images, chunk=chunk).feats


class Encoded(NamedTuple):
    """A split's images as the decision path reads them (`promptclip.ModelRunner`)."""

    feats: Tensor  # (N, E) normalised embeddings under the task's vision prompts
    taps: Tensor  # (N, layers, Wv) the image tower's layer means
    bare: Tensor | None  # (N, E) the frozen tower's normalised features (a zero-shot guard's input), if asked


@torch.no_grad()
def encode_chunks(runner: ModelRunner, vp: Tensor, chunks: Iterable[Tensor], bare_first: int = 0,
                  sigma: float = 0.0) -> Encoded:
    """Preprocessed image chunks (each (n, 3, H, W)) under vision prompts `vp` (depth, n, Wv), low-passed by
    `sigma` pixels first (the bundle's input low-pass), and the first `bare_first` unfiltered images through
    the bare tower too: what the service's engine computes per request."""
    feats, taps, plain, seen = [], [], [], 0
    for x in chunks:
        x = x.to(runner.device)
        f, t = runner.prompted(x, vp.unsqueeze(0).expand(len(x), -1, -1, -1), [sigma] * len(x))
        feats.append(f.float().cpu())
        taps.append(t.float().cpu())
        if seen < bare_first:
            plain.append(runner.bare(x[: bare_first - seen]).cpu())
        seen += len(x)
    return Encoded(torch.cat(feats), torch.cat(taps), torch.cat(plain) if plain else None)  # usable outside inference


def encode_images(model: MultiTaskCLIP, ti: int, images: Tensor, bare_first: int = 0, chunk: int = 256) -> Encoded:
    """Preprocessed `images` (N, 3, H, W) under task `ti`'s vision prompts (encode_chunks)."""
    chunks = (images[i:i + chunk] for i in range(0, len(images), chunk))
    task = model.tasks[ti]
    return encode_chunks(ModelRunner(model.encoder), model.prompts.vision(task), chunks, bare_first,
                         model.lowpass.get(task, 0.0))


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
    """What export writes for one domain: calibrated labels, the manifest's decision, negatives, tensors, rates."""

    labels: list[Label]
    decision: dict
    negatives: dict
    tensors: dict[str, Tensor]  # the scope model's and the calibration split's bundle tensors
    rates: dict
    curves: dict  # raw scores for the plots


def decide_features(feats: Tensor, taps: Tensor, bank: DomainBank, scale: float,
                    bare: Tensor | None = None) -> list[dict]:
    """The service's decisions for one domain's images (promptclip.runner.decide_features), as answer dicts;
    `bare`: the frozen tower's features, for a guarded bank."""
    banks = Banks.stack([bank], device=torch.device("cpu"))
    rows = torch.zeros(len(feats), dtype=torch.long)
    return runner_decide(feats, taps, rows, banks, scale, bare=bare).answers(banks)


def scope_sources(cfg: DecisionConfig, layers: int) -> list[str]:
    """The Gaussian signals `cfg.scope_signals` names: 'layers' (every block's mean token) and 'final'."""
    out = [f"layer{k}" for k in range(1, layers + 1)] if "layers" in cfg.scope_signals else []
    return out + (["final"] if "final" in cfg.scope_signals else [])


@torch.no_grad()
def fit_domain(model: MultiTaskCLIP, ti: int, dom: DomainData, tokenizer, cache: ImageCache,
               calib: list[tuple[Path, int]], shots: list[tuple[Path, int]], ood: dict[str, list[Image.Image]],
               cfg: DecisionConfig) -> DomainDecision:
    """Fit the rule on `calib` (the zero-shot guard's weight and Platt on `calib`, the scope model on
    `calib` + the training `shots`, cross-fitted) and measure it on the test split and the OOD probe set."""
    scale = float(model.encoder.logit_scale)
    names, neg = mine_negatives(model, ti, tokenizer, cfg)
    labels_f = model.text_features(model.tasks[ti]).float().cpu()
    guarding = bool(cfg.guard_weights)
    # one pass over calibration + shots (either may be empty on a small data set, not both); the bare
    # tower over the calibration images only, for the guard
    enc = encode_images(model, ti, cache.load([p for p, _ in calib + shots], cache=False),
                        bare_first=len(calib) if guarding else 0)
    cal_x, cal_bare = enc.feats[: len(calib)], enc.bare
    y = torch.tensor([li for _, li in calib], dtype=torch.long)
    guard, zero_shot = choose_guard(model, dom, tokenizer, labels_f, cal_x, cal_bare, y, cfg)
    if not guard["weight"]:
        zero_shot = cal_bare = None  # prompted only: serving needs no bare pass for this domain
    scope, cross = fit_scope(enc.feats, enc.taps, scope_sources(cfg, enc.taps.shape[1]), cfg.scope_combine,
                             cfg.scope_rank)
    unsafe = torch.tensor([lab.unsafe for lab in dom.labels])
    platt_bank = Banks.stack([DomainBank(labels_f, neg, None, None, zero_shot, guard["weight"])],
                             device=torch.device("cpu"))
    cal_scores = score_batch(cal_x, torch.zeros(len(cal_x), dtype=torch.long), platt_bank, scale, bare=cal_bare)
    fitted = fit_rule(cal_scores, cross[: len(calib)], y, unsafe, cfg, scope_pool=cross)
    fitted.decision["scope"]["model"] = None if scope is None else scope.manifest()
    fitted.decision["scope"]["fitted_on"] = {"calibration": len(calib), "training_shots": len(shots)}
    fitted.decision["guard"] = guard
    labels = [replace(lab, threshold=fitted.threshold, calibration=cal)
              for lab, cal in zip(dom.labels, fitted.calibrations, strict=True)]
    bank = DomainBank(labels_f, neg, scope, DecisionRule.from_manifest(labels, fitted.decision), zero_shot,
                      guard["weight"])
    test_y = torch.tensor([li for _, li in dom.test])
    test = decide_images(model, ti, cache.load([p for p, _ in dom.test], cache=False), bank, scale)
    ood_dec = {kind: decide_images(model, ti, torch.stack([cache.preprocess(im) for im in imgs]), bank, scale)
               for kind, imgs in ood.items()}
    rates = decision_rates(test, test_y, unsafe, ood_dec)
    rates["calibration_targets_met"] = fitted.decision["targets_met"]
    rates["can_flag"] = fitted.decision["can_flag"]
    rates["guard_weight"] = guard["weight"]
    _warn_unmet(dom.name, fitted, rates)
    tensors = {} if scope is None else scope.tensors()
    tensors.update({"calibration.features": cal_x.half().contiguous(), "calibration.labels": y.contiguous(),
                    "calibration.scope": cross[: len(calib)].float().contiguous()})
    if cal_bare is not None:
        tensors["calibration.bare"] = cal_bare.half().contiguous()
    return DomainDecision(labels, fitted.decision, {"template": cfg.negative_template, "names": names}, tensors,
                          rates, {"test": test, "test_y": test_y.tolist(), "ood": ood_dec, "unsafe": unsafe.tolist(),
                                  "review_threshold": fitted.decision["review_threshold"],
                                  "threshold": fitted.threshold})


def decide_images(model: MultiTaskCLIP, ti: int, images: Tensor, bank: DomainBank, scale: float) -> list[dict]:
    """The service's decisions for preprocessed `images` of task `ti` (a bare pass too where `bank` is guarded)."""
    enc = encode_images(model, ti, images, bare_first=len(images) if bank.guard > 0 else 0)
    return decide_features(enc.feats, enc.taps, bank, scale, enc.bare)


def choose_guard(model: MultiTaskCLIP, dom: DomainData, tokenizer, labels_f: Tensor, cal_x: Tensor, cal_bare: Tensor | None,
                 y: Tensor, cfg: DecisionConfig) -> tuple[dict, Tensor | None]:
    """The zero-shot guard's weight on the calibration split (`training.guard.choose_weight`, as evaluation's
    `guarded` row chooses it) and the frozen text tower's label features; weight 0 when the guard is off."""
    if cal_bare is None:
        return {"weight": 0.0, "candidates": []}, None
    from promptclip.banks import zero_shot_labels

    from .guard import choose_weight

    zero_shot = zero_shot_labels(model.encoder, tokenizer, [lab.prompt for lab in dom.labels], "cpu")
    w, acc, p = choose_weight(scale_logits(cal_bare, zero_shot, model), scale_logits(cal_x, labels_f, model), y,
                              tuple(cfg.guard_weights), cfg.guard_alpha)
    if not acc:
        log.warning("%s: no calibration image to choose the zero-shot guard on; the bundle predicts zero-shot",
                    dom.name)
    return {"weight": w, "candidates": list(cfg.guard_weights), "alpha": cfg.guard_alpha, "p_value": p,
            "calibration_images": len(y), "calibration_accuracy": {str(k): round(v, 4) for k, v in acc.items()}}, \
        zero_shot


def scale_logits(feats: Tensor, labels: Tensor, model: MultiTaskCLIP) -> Tensor:
    return float(model.encoder.logit_scale) * feats.float() @ labels.float().T


def decision_rates(test: list[dict], y: Tensor, unsafe: Tensor, ood: dict[str, list[dict]]) -> dict:
    """Test-split and OOD rates of the decisions, each with its 95% Wilson interval; per OOD kind also
    the scope score's AUROC and FPR at 95% in-domain recall (OpenOOD's metrics)."""
    is_unsafe = unsafe[y].tolist()

    def count(items, key):
        return sum(bool(d[key]) for d in items)

    ben = [d for d, u in zip(test, is_unsafe, strict=True) if not u]
    uns = [d for d, u in zip(test, is_unsafe, strict=True) if u]
    caught = sum(d["flagged"] or d["needs_review"] for d in uns)
    pooled = [d for items in ood.values() for d in items]
    correct = sum(d["labels"][int(t)]["softmax"] == max(lab["softmax"] for lab in d["labels"]) for d, t in zip(
        test, y.tolist(), strict=True))  # the decision's label distribution (blended under a zero-shot guard)
    acc = wilson(correct, len(test))
    in_scores = torch.tensor([d["scope_score"] for d in test], dtype=torch.float64)
    return {
        "accuracy": acc["rate"] if acc["rate"] is not None else 0.0,
        "accuracy_interval": acc,
        "benign_false_flag": wilson(count(ben, "flagged"), len(ben)),
        "unsafe_recall": wilson(count(uns, "flagged"), len(uns)),
        "unsafe_caught": wilson(caught, len(uns)),
        "review_rate": wilson(count(test, "needs_review"), len(test)),
        "in_scope": wilson(count(test, "in_scope"), len(test)),
        "ood_flagged": wilson(count(pooled, "flagged"), len(pooled)),
        "ood_in_scope": wilson(count(pooled, "in_scope"), len(pooled)),
        "ood_flagged_by_kind": {k: wilson(count(v, "flagged"), len(v)) for k, v in ood.items()},
        "ood_by_kind": {k: ood_metrics(in_scores, torch.tensor([d["scope_score"] for d in v], dtype=torch.float64))
                        for k, v in ood.items()},
    }


def ood_metrics(in_scores: Tensor, out_scores: Tensor) -> dict:
    """AUROC (in-domain scored above OOD; ties count half) and FPR@95 (share of OOD at or above the cut
    that keeps 95% of in-domain images) of scope scores, OpenOOD's definitions. Infinite scores
    (no scope model) give AUROC 0.5."""
    if not len(in_scores) or not len(out_scores):
        return {"auroc": None, "fpr95": None}
    from sklearn.metrics import roc_auc_score

    both = torch.cat([in_scores, out_scores]).double().nan_to_num(posinf=1e300, neginf=-1e300)
    a, b = both[: len(in_scores)], both[len(in_scores):]
    auroc = float(roc_auc_score([1] * len(a) + [0] * len(b), both.numpy()))  # ties count half (Mann-Whitney)
    cut = torch.quantile(a, 0.05)
    return {"auroc": round(auroc, 4), "fpr95": round(float((b >= cut).double().mean()), 4)}


def _warn_unmet(domain: str, fitted: FittedRule, rates: dict) -> None:
    d = fitted.decision
    if not d["can_flag"]:
        log.warning("%s: cannot flag: %s", domain, d["cannot_flag_reason"])
    elif not d["targets_met"]["max_false_flag"]:
        log.warning("%s: %d benign calibration images are too few to show the false-flag target; the threshold is "
                    "the point estimate (test false flags %s)", domain, d["calibration_split"]["benign"],
                    _fmt(rates["benign_false_flag"]))
    if d["can_flag"] and not d["targets_met"]["review_target"]:
        log.warning("%s: review target not met within the review budget (weak features); false flags kept at "
                    "target, test caught %s", domain, _fmt(rates["unsafe_caught"]))


def _fmt(r: dict) -> str:
    return "n/a" if r["rate"] is None else f"{r['rate']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"


@torch.no_grad()
def refit_with_reviews(bundle: Bundle, clip, enc: Encoded, labels: list[str | None],
                       unsafe: list[bool], version: str) -> Bundle:
    """`bundle`'s rule refitted on its calibration split plus reviewers' verdicts, as version `version`.

    The prompt tensors, negatives and scope model are kept (the scope cut too: verdicts include
    out-of-scope images, which must never move an in-domain cut). Platt per label, the flag threshold
    and the review threshold are refitted with the targets the bundle was exported with.

    Args:
        enc: the reviewed images' embeddings (M, E) and layer means (M, layers, Wv) under the bundle's
            vision prompts, and their frozen-tower features (M, E) when the bundle has a zero-shot guard
            (`training.recalibrate.features`); labels: each verdict's label name, or None (none of the
            labels); unsafe: each verdict's unsafe flag.
    """
    from promptclip import PromptedCLIP, bundle_bank

    cal = bundle.calibration()
    if cal is None:
        raise ValueError(f"{bundle.domain}@{bundle.version} carries no calibration split; re-export it first")
    m = bundle.manifest
    names = [lab.name for lab in m.labels]
    unknown = sorted({x for x in labels if x is not None and x not in names})
    if unknown:
        raise ValueError(f"verdict labels {unknown} are not labels of {bundle.domain} ({names})")
    bank, _ = bundle_bank(bundle, PromptedCLIP(clip.model), clip.tokenizer, torch.device("cpu"))
    banks = Banks.stack([bank], device=torch.device("cpu"))
    scale = float(clip.model.logit_scale.exp())
    cal_x, cal_y, cal_scope = cal
    plain = None  # the frozen tower's features of calibration + reviewed images, for a guarded bundle
    if bank.guard > 0:
        if bundle.calibration_bare() is None or enc.bare is None:
            raise ValueError(f"{bundle.domain}@{bundle.version} has a zero-shot guard: recalibration needs the "
                             "frozen tower's features of its calibration split and of the reviewed images")
        plain = torch.cat([bundle.calibration_bare().float(), enc.bare.float()])
    rows = torch.zeros(len(enc.feats), dtype=torch.long)
    scope = score_batch(enc.feats.float(), rows, banks, scale, enc.taps.float(), enc.bare).scope
    x = torch.cat([cal_x.float(), enc.feats.float()])
    y = torch.cat([cal_y, torch.tensor([-1 if x is None else names.index(x) for x in labels], dtype=torch.long)])
    label_unsafe = torch.tensor([lab.unsafe for lab in m.labels])
    row_unsafe = torch.cat([label_unsafe[cal_y], torch.tensor(unsafe, dtype=torch.bool)])
    platt_bank = Banks.stack([replace(bank, scope=None)], device=torch.device("cpu"))  # Platt's inputs; scope: above
    scores = score_batch(x, torch.zeros(len(x), dtype=torch.long), platt_bank, scale, bare=plain)
    targets = m.decision.get("targets", {})
    cfg = DecisionConfig(**{k: v for k, v in targets.items() if k in DecisionConfig.__dataclass_fields__},
                         scope_signals=list(m.decision.get("scope", {}).get("signals", ["layers", "final"])))
    fitted = fit_rule(scores, torch.cat([cal_scope, scope]), y, label_unsafe, cfg, scope_pool=cal_scope,
                      row_unsafe=row_unsafe)
    decision = fitted.decision
    decision["scope"] = {**m.decision.get("scope", {})}  # the exported scope model and cut, unchanged
    if "guard" in m.decision:
        decision["guard"] = m.decision["guard"]  # the exported zero-shot weight, unchanged
    decision["calibration"] = {"reviews": len(labels), "from_version": bundle.version}
    new_labels = [replace(lab, threshold=fitted.threshold, calibration=c)
                  for lab, c in zip(m.labels, fitted.calibrations, strict=True)]
    manifest = replace(m, version=version, labels=new_labels, decision=decision, created_at="", sha256="",
                       metrics={**m.metrics, "recalibrated": {"reviews": len(labels), "from_version": bundle.version}})
    return Bundle(manifest, stored_form(bundle.tensors))
