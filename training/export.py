"""Export trained prompts as bundles (DESIGN §5) with calibrated decisions (§11), and roll back.

For every domain the decision rule is fitted on the calibration split (validation plus the pool
images the exported seed did not train on; never test): Platt-calibrated label probabilities,
out-of-scope cuts, a flag threshold at the operator's false-flag target and a review threshold
at the review target (see `training.calibrate`). The manifest records the targets, whether they
were met, and the test-split and OOD-probe rates with 95% intervals. `RUN/decisions.md`,
`RUN/decisions.json` and one PNG per domain (`RUN/decisions/<domain>.png`: ROC and
precision-recall curves with the operating points) sit beside `report.md`.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from promptclip import PromptStore, bundle_from_prompts

from .config import DecisionConfig
from .data import ImageCache, TaskData
from .decisions import fit_domain
from .ood import ood_images
from .train import load_final

log = logging.getLogger(__name__)


def created_at(explicit: str = "") -> str:
    if explicit:
        return explicit
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.isoformat(timespec="seconds")


def export_run(clip, encoder, data: TaskData, cache: ImageCache, final_path: Path, store_dir: Path,
               dcfg: DecisionConfig, shots: int, version: str = "", created: str = "",
               report_dir: Path | None = None) -> dict:
    """Publish one bundle per domain from a trained run; returns {domain: {version, path, rates}}."""
    from .plots import decision_plots, decisions_markdown

    model, saved = load_final(final_path, encoder, clip.tokenizer, data)
    seed = saved["key"]["train"]["seed"]
    ood = ood_images(dcfg.ood_seed, dcfg.ood_per_kind, clip.info.image_size)
    store = PromptStore(store_dir)
    stamp = created_at(created)
    out, curves = {}, {}
    for ti, dom in enumerate(data.domains):
        calib = dom.calibration(shots, seed)
        fitted = fit_domain(model, ti, dom, clip.tokenizer, cache, calib, ood, dcfg)
        metrics = {"accuracy": fitted.rates["accuracy"], "n_test": len(dom.test), "n_calibration": len(calib),
                   "split": "test", "decisions": fitted.rates, "variant": saved["key"]["variant"],
                   "train_seed": seed, "data_fingerprint": saved["key"]["data"],
                   "ood_probe": {"seed": dcfg.ood_seed, "per_kind": dcfg.ood_per_kind, "kinds": sorted(ood)}}
        v = version or store.next_version(dom.name)
        bundle = bundle_from_prompts(model.prompts, dom.name, version=v, base=clip.info, labels=fitted.labels,
                                     metrics=metrics)
        bundle.manifest.decision = fitted.decision
        bundle.manifest.negatives = fitted.negatives
        bundle.manifest.created_at = stamp
        bundle.tensors["scope.bank"], bundle.tensors["scope.labels"] = (t.contiguous() for t in fitted.bank)
        if dom.name in model.label_cache:
            bundle.tensors["labels.cache"] = model.label_cache[dom.name].half().contiguous()
            bundle.manifest.prompt["cache_weight"] = model.cache_weights[dom.name]
        path = store.publish(bundle, base=clip.info)
        out[dom.name] = {"version": v, "path": str(path), "accuracy": metrics["accuracy"],
                         "threshold": fitted.labels[0].threshold, "review_threshold": fitted.decision[
                             "review_threshold"], "rates": fitted.rates}
        curves[dom.name] = fitted.curves
        r = fitted.rates
        log.info("exported %s %s: accuracy %.3f, false flags %.3f, recall %.3f, caught %.3f, review %.3f, "
                 "OOD flagged %.3f", dom.name, v, r["accuracy"], r["benign_false_flag"]["rate"],
                 r["unsafe_recall"]["rate"], r["unsafe_caught"]["rate"], r["review_rate"]["rate"],
                 r["ood_flagged"]["rate"])
    if report_dir is not None:
        decision_plots(curves, Path(report_dir) / "decisions")
        write_json(Path(report_dir) / "decisions.json", {d: o["rates"] for d, o in out.items()})
        (Path(report_dir) / "decisions.md").write_text(decisions_markdown(out, dcfg) + "\n")
    return out


def rollback(store_dir: Path, domain: str, version: str, base=None) -> Path:
    return PromptStore(store_dir).rollback(domain, version, base)


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")
