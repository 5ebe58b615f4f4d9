"""Export trained prompts as bundles (DESIGN §5) and roll the store back.

Per-label thresholds are calibrated on the validation split (images never trained on): for
each label, one-vs-rest, the probability cut that maximises F1 over the domain's validation
images; among equally good cuts the median one; clipped to [0.05, 0.95]. Held-out metrics
(accuracy, per-label precision/recall at those thresholds, unsafe flag rates) come from the
test split.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from promptclip import Label, PromptStore, bundle_from_prompts

from .data import ImageCache, TaskData
from .train import load_final, predict

log = logging.getLogger(__name__)

CALIBRATION = ("per label, one-vs-rest on the validation split (never trained on): the probability cut that "
               "maximises F1; among equally good cuts the median; clipped to [0.05, 0.95]")


def calibrate_threshold(probs: Tensor, positive: Tensor) -> float:
    """F1-maximising cut on one label's probabilities; 0.5 when the label has no validation images."""
    if positive.sum() == 0:
        return 0.5
    scores = sorted(set(probs.tolist()))
    cuts = [0.0] + [(a + b) / 2 for a, b in zip(scores, scores[1:], strict=False)] + [scores[-1] + 1e-6]
    f1s = []
    for c in cuts:
        flag = probs >= c
        tp = float((flag & positive).sum())
        f1s.append(2 * tp / max(1.0, float(flag.sum()) + float(positive.sum())))
    top = max(f1s)
    tied = [c for c, f in zip(cuts, f1s, strict=True) if f >= top - 1e-12]
    return float(min(0.95, max(0.05, tied[len(tied) // 2])))


def flag_metrics(probs: Tensor, labels: Tensor, lab: list[Label]) -> dict:
    """Accuracy and, at the calibrated thresholds, per-label precision/recall and unsafe flag rates."""
    out = {"accuracy": round(float((probs.argmax(1) == labels).float().mean()), 4), "n_test": len(labels)}
    per = {}
    for li, label in enumerate(lab):
        flag, pos = probs[:, li] >= label.threshold, labels == li
        tp = float((flag & pos).sum())
        per[label.name] = {"precision": round(tp / max(1.0, float(flag.sum())), 4),
                           "recall": round(tp / max(1.0, float(pos.sum())), 4)}
    out["per_label"] = per
    unsafe = torch.tensor([la.unsafe for la in lab])
    if unsafe.any():
        thr = torch.tensor([la.threshold for la in lab])
        flagged = ((probs >= thr) & unsafe).any(1)
        is_unsafe = unsafe[labels]
        out["unsafe_recall"] = round(float(flagged[is_unsafe].float().mean()), 4) if is_unsafe.any() else None
        out["safe_false_flag_rate"] = round(float(flagged[~is_unsafe].float().mean()), 4) if (~is_unsafe).any() \
            else None
    return out


def created_at(explicit: str = "") -> str:
    if explicit:
        return explicit
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.isoformat(timespec="seconds")


def export_run(clip, encoder, data: TaskData, cache: ImageCache, final_path: Path, store_dir: Path,
               version: str = "", created: str = "") -> dict:
    """Publish one bundle per domain from a trained run; returns {domain: {version, path, metrics}}."""
    model, saved = load_final(final_path, encoder, clip.tokenizer, data)
    keep = clip.info.image_size <= 64
    val, test = predict(model, cache, data, "val", keep), predict(model, cache, data, "test", keep)
    store = PromptStore(store_dir)
    stamp = created_at(created)
    out = {}
    for dom in data.domains:
        pv, yv = val[dom.name]
        labels = [Label(lab.name, lab.prompt, lab.unsafe, round(calibrate_threshold(pv[:, li], yv == li), 4))
                  for li, lab in enumerate(dom.labels)]
        metrics = flag_metrics(*test[dom.name], labels)
        metrics.update({"n_val": len(yv), "threshold_calibration": CALIBRATION, "split": "test",
                        "variant": saved["key"]["variant"], "train_seed": saved["key"]["train"]["seed"],
                        "data_fingerprint": saved["key"]["data"]})
        v = version or store.next_version(dom.name)
        bundle = bundle_from_prompts(model.prompts, dom.name, version=v, base=clip.info, labels=labels,
                                     metrics=metrics)
        bundle.manifest.created_at = stamp
        path = store.publish(bundle, base=clip.info)
        out[dom.name] = {"version": v, "path": str(path), "accuracy": metrics["accuracy"],
                         "thresholds": {la.name: la.threshold for la in labels}}
        log.info("exported %s %s (test accuracy %.3f)", dom.name, v, metrics["accuracy"])
    return out


def rollback(store_dir: Path, domain: str, version: str, base=None) -> Path:
    return PromptStore(store_dir).rollback(domain, version, base)


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")
