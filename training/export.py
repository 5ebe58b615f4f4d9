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
from datetime import UTC, datetime
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
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
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
    out, curves, summary = {}, {}, {}
    refused = []
    for ti, dom in enumerate(data.domains):
        calib = dom.calibration(shots, seed)
        fitted = fit_domain(model, ti, dom, clip.tokenizer, cache, calib, dom.shots(shots, seed), ood, dcfg)
        summary[dom.name] = fitted
        if _refuse(dom, fitted, dcfg):
            refused.append(dom.name)
            continue
        metrics = {"accuracy": fitted.rates["accuracy"], "accuracy_interval": fitted.rates["accuracy_interval"],
                   "n_test": len(dom.test), "n_calibration": len(calib),
                   "split": "test", "decisions": fitted.rates, "variant": saved["key"]["variant"],
                   "train_seed": seed, "data_fingerprint": saved["key"]["data"],
                   "ood_probe": {"seed": dcfg.ood_seed, "per_kind": dcfg.ood_per_kind, "kinds": sorted(ood)}}
        v = version or store.next_version(dom.name)
        bundle = bundle_from_prompts(model.prompts, dom.name, version=v, base=clip.info, labels=fitted.labels,
                                     metrics=metrics)
        bundle.manifest.decision = fitted.decision
        bundle.manifest.negatives = fitted.negatives
        bundle.manifest.created_at = stamp
        bundle.tensors.update(fitted.tensors)
        if dom.name in model.lowpass:
            bundle.manifest.prompt["input_lowpass"] = model.lowpass[dom.name]
        if dom.name in model.label_cache:
            bundle.tensors["labels.cache"] = model.label_cache[dom.name].half().contiguous()
            bundle.manifest.prompt["cache_weight"] = model.cache_weights[dom.name]
        path = store.publish(bundle, base=clip.info)
        out[dom.name] = {"version": v, "path": str(path), "accuracy": metrics["accuracy"],
                         "threshold": fitted.labels[0].threshold, "review_threshold": fitted.decision[
                             "review_threshold"], "rates": fitted.rates}
        curves[dom.name] = fitted.curves
        r = fitted.rates
        log.info("exported %s %s: accuracy %s, false flags %s, recall %s, caught %s, review %s, OOD flagged %s",
                 dom.name, v, *(_rate(r[k]) for k in ("accuracy_interval", "benign_false_flag", "unsafe_recall",
                                                     "unsafe_caught", "review_rate", "ood_flagged")))
    if report_dir is not None and out:
        decision_plots(curves, Path(report_dir) / "decisions")
        write_json(Path(report_dir) / "decisions.json", {d: o["rates"] for d, o in out.items()})
        (Path(report_dir) / "decisions.md").write_text(decisions_markdown(out, dcfg) + "\n")
    table = summary_table(summary, dcfg)
    (log.warning if refused or not all(f.decision["can_flag"] for f in summary.values()) else log.info)(
        "decisions per domain (test split, 95%% intervals):\n%s", table)
    if refused:
        raise UnflaggableDomains(f"not published: {', '.join(refused)} cannot flag any image ("
                                 + "; ".join(f"{d}: {summary[d].decision['cannot_flag_reason']}" for d in refused)
                                 + "); add calibration images, or pass --allow-unflaggable to publish anyway")
    return out


class UnflaggableDomains(ValueError):
    """Some domain with unsafe labels cannot flag at all; the others were published."""


def _refuse(dom, fitted, dcfg: DecisionConfig) -> bool:
    """A domain that has unsafe labels yet cannot flag is not published unless the operator allows it."""
    has_unsafe = any(lab.unsafe for lab in dom.labels)
    return has_unsafe and not fitted.decision["can_flag"] and not dcfg.allow_unflaggable


def _rate(r: dict) -> str:
    """A rate with its 95% interval, or n/a when nothing was measured (e.g. no unsafe image)."""
    return "n/a" if r["rate"] is None else f"{r['rate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"


def summary_table(fitted: dict, dcfg: DecisionConfig) -> str:
    """One line per domain: can it flag, were the targets shown, and the test-split rates with intervals."""
    cell = _rate

    rows = [("domain", "can flag", f"false flags <= {dcfg.max_false_flag} shown", "review target shown",
             "calibration images", "zero-shot weight", "benign false flags", "unsafe recall", "unsafe caught")]
    for dom, f in fitted.items():
        d, r = f.decision, f.rates
        rows.append((dom, "yes" if d["can_flag"] else f"NO ({d['cannot_flag_reason']})",
                     "yes" if d["targets_met"]["max_false_flag"] else "no (point estimate)",
                     "yes" if d["targets_met"]["review_target"] else "no", str(d["calibration_split"]["images"]),
                     f"{r.get('guard_weight', 0.0):g}", cell(r["benign_false_flag"]), cell(r["unsafe_recall"]), cell(r["unsafe_caught"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def rollback(store_dir: Path, domain: str, version: str, base=None) -> Path:
    return PromptStore(store_dir).rollback(domain, version, base)


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")
