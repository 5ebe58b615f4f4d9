"""Evaluation against the baselines (DESIGN §7): the variants, the same budget, several seeds.

zero_shot            bare CLIP with the label prompts (no training)
private_only         every task alone: n private tokens
all_shared           one prompt set for all tasks: n shared tokens, nothing private
group_private        ours: g tokens shared in the gradient-similarity group + p private
global_group_private one group holding every task: g shared + p private
random_groups        control: group_private's layout on random partitions with the same group sizes
prototype            baseline: nearest class mean of the shots' frozen image features (no training)
guarded              group_private under the zero-shot guard (training/guard.py): per domain, the
                     calibration split picks prompted, zero-shot or a logit blend of the two

Every trained variant gives a task n = g + p prompt tokens per layer per tower and trains for
the same steps on the same shots (chosen by the seed), with the same consistency loss to the
frozen CLIP and the same label cache (class means of its prompted shot features). Accuracy is on the held-out test split;
differences against group_private come with paired bootstrap intervals (training/stats.py).
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import numpy as np

from .baselines import prototype_params, prototype_predict
from .config import EvalConfig
from .guard import GUARD_ALPHA, GUARD_WEIGHTS, guard_applies, guarded_seed
from .parallel import variant_runs
from .runtime import RunContext
from .stats import paired_bootstrap, per_seed_diffs
from .train import accuracy, predict, train_variant

log = logging.getLogger(__name__)
OURS = "group_private"

SHOTS_NOTE = ("Shots default to 4 per label per domain: the few-shot regime this method targets. With many shots "
              "every domain can fit private prompts alone (an earlier trial at 16 shots could not tell private, "
              "group and global prompts apart); with few, a group prompt sees 2-3x the data of a private one.")


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _correct(preds) -> dict[str, np.ndarray]:
    return {d: (p.argmax(1) == y).double().numpy() for d, (p, y) in preds.items()}


def run_variant(rc: RunContext, variant: str, groups: list[list[str]], ecfg: EvalConfig, run_dir: Path,
                keep: bool) -> tuple[dict[str, float], dict[str, np.ndarray], int, list]:
    """One variant at rc.train.seed: (accuracy per domain, correctness per test image, parameters, partitions)."""
    seed = rc.train.seed
    if variant == "prototype":
        preds = prototype_predict(rc, seed, keep=keep)
        return accuracy(preds), _correct(preds), prototype_params(rc), []
    if variant == "random_groups":
        accs, corrects, parts, params = [], [], [], 0
        for r in variant_runs(variant, rc.data.tasks, groups, seed, ecfg.random_draws, run_dir):
            model = train_variant(rc, variant, r.groups, r.out_dir)
            preds = predict(model, rc.cache, rc.data, "test", keep=keep)
            accs.append(accuracy(preds))
            corrects.append(_correct(preds))
            parts.append(r.groups)
            params = model.prompts.num_trainable()
        acc = {d: statistics.mean(a[d] for a in accs) for d in accs[0]}
        return acc, {d: np.mean([c[d] for c in corrects], 0) for d in acc}, params, parts
    (r,) = variant_runs(variant, rc.data.tasks, groups, seed, 1, run_dir)
    model = train_variant(rc, variant, groups, r.out_dir)
    preds = predict(model, rc.cache, rc.data, "test", keep=keep)
    return accuracy(preds), _correct(preds), model.prompts.num_trainable(), []


def summarise(by_seed: dict[int, dict[str, float]], params: int, tasks: list[str]) -> dict:
    """report.json's entry of one variant: means over seeds, sds, per-seed tables."""
    seeds = sorted(by_seed)
    means = [statistics.mean(by_seed[s].values()) for s in seeds]
    return {
        "per_domain": {d: statistics.mean(by_seed[s][d] for s in seeds) for d in tasks},
        "mean": statistics.mean(means),
        "trainable_params": params,
        "per_domain_sd": {d: _sd([by_seed[s][d] for s in seeds]) for d in tasks},
        "mean_sd": _sd(means),
        "per_seed": {str(s): {"per_domain": by_seed[s], "mean": m} for s, m in zip(seeds, means, strict=True)},
    }


def evaluate(rc: RunContext, groups: list[list[str]], ecfg: EvalConfig, run_dir: Path) -> dict:
    """Train (or reuse) every variant for every seed; write report.json and report.md."""
    run_dir = Path(run_dir)
    keep = rc.clip.info.image_size <= 64  # small images: keep the test set in memory across variants
    acc: dict[str, dict[int, dict[str, float]]] = {v: {} for v in ecfg.variants}
    correct: dict[str, dict[int, dict[str, np.ndarray]]] = {v: {} for v in ecfg.variants}
    params: dict[str, int] = {}
    partitions: dict[str, list] = {}
    for seed in ecfg.seeds:
        rcs = rc.with_train(seed=seed)
        for variant in ecfg.variants:
            if variant == "zero_shot" and acc[variant]:  # no training: the same for every seed
                first = next(iter(acc[variant]))
                acc[variant][seed], correct[variant][seed] = acc[variant][first], correct[variant][first]
                continue
            a, c, params[variant], parts = run_variant(rcs, variant, groups, ecfg, run_dir, keep)
            acc[variant][seed], correct[variant][seed] = a, c
            if parts:
                partitions[str(seed)] = parts
            log.info("seed %d %-21s mean %.3f", seed, variant, statistics.mean(a.values()))
    report = {
        "variants": {v: summarise(acc[v], params[v], rc.data.tasks) for v in ecfg.variants},
        "domains": rc.data.tasks, "seeds": list(ecfg.seeds), "groups": groups,
        "paired": paired_against(correct, ecfg), "random_partitions": partitions,
        "grouping_stability": _stability(run_dir),
        "budget": {"steps": rc.train.steps, "shots_per_label": rc.split.shots,
                   "batch_per_task": rc.train.batch_per_task,
                   "tokens_per_task_per_layer": rc.sizes.group_tokens + rc.sizes.private_tokens,
                   "group_tokens": rc.sizes.group_tokens, "private_tokens": rc.sizes.private_tokens,
                   "lr": rc.train.lr, "cache_weights": rc.train.cache_weights,
                   "consistency": {"image": rc.train.consistency_image, "text": rc.train.consistency_text,
                                   "kl": rc.train.consistency_kl}},
        "test_images": {d.name: len(d.test) for d in rc.data.domains},
        "model": rc.clip.info.to_dict(),
        "shots_note": SHOTS_NOTE,
    }
    if guard_applies(ecfg.variants):
        report["guarded"] = guard_report(rc, groups, ecfg, run_dir, keep, correct, params[OURS])
    if rc.dist.is_main:
        (run_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (run_dir / "report.md").write_text(report_markdown(report) + "\n")
    return report


def paired_against(correct: dict, ecfg: EvalConfig) -> dict:
    """Every variant minus group_private: point difference, 95% bootstrap interval, per-seed differences."""
    if OURS not in correct:
        return {}
    return {v: {**paired_bootstrap(c, correct[OURS], ecfg.bootstrap), "per_seed": per_seed_diffs(c, correct[OURS])}
            for v, c in correct.items() if v != OURS}


def guard_report(rc: RunContext, groups: list[list[str]], ecfg: EvalConfig, run_dir: Path, keep: bool,
                 correct: dict, params: int) -> dict:
    """report.json's "guarded" entry: group_private under the zero-shot guard, every seed, with paired
    intervals against group_private and, per domain, against zero-shot."""
    acc, hits, choices = {}, {}, {}
    for seed in ecfg.seeds:
        acc[seed], hits[seed], choices[str(seed)] = guarded_seed(rc.with_train(seed=seed), groups, run_dir, keep)
        log.info("seed %d %-21s mean %.3f", seed, "guarded", statistics.mean(acc[seed].values()))
    out = summarise(acc, params, rc.data.tasks)
    zs = correct["zero_shot"]

    def per_domain(a: dict) -> dict:
        return {d: paired_bootstrap({s: {d: a[s][d]} for s in a}, {s: {d: zs[s][d]} for s in a}, ecfg.bootstrap)
                for d in rc.data.tasks}

    out.update(weights=GUARD_WEIGHTS, alpha=GUARD_ALPHA, choices=choices,
               paired={**paired_bootstrap(hits, correct[OURS], ecfg.bootstrap),
                       "per_seed": per_seed_diffs(hits, correct[OURS])},
               vs_zero_shot=per_domain(hits), prompted_vs_zero_shot=per_domain(correct[OURS]))
    out["within_1_point"] = all(v["diff"] >= -0.01 for v in out["vs_zero_shot"].values())
    return out


def _stability(run_dir: Path) -> dict | None:
    path = run_dir / "groups.json"
    return json.loads(path.read_text()).get("stability") if path.is_file() else None


def _table(report: dict) -> list[str]:
    doms = report["domains"]
    lines = ["| variant | " + " | ".join(doms) + " | mean | trainable params |", "|---|" + "---|" * (len(doms) + 2)]
    rows = {**report["variants"], **({"guarded": report["guarded"]} if report.get("guarded") else {})}
    for v, r in rows.items():
        cells = [f"{100 * r['per_domain'][d]:.1f} ± {100 * r['per_domain_sd'][d]:.1f}" for d in doms]
        mean = f"{100 * r['mean']:.1f} ± {100 * r['mean_sd']:.1f}"
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {mean} | {r['trainable_params']:,} |")
    return lines


def _guard_lines(report: dict) -> list[str]:
    g = report.get("guarded")
    if not g:
        return []
    doms, seeds = report["domains"], report["seeds"]
    verdict = "every domain is" if g["within_1_point"] else "NOT every domain is"
    p = g["paired"]
    lines = ["", f"Zero-shot guard (guarded: {OURS} where, per domain, the calibration split picks the zero-shot "
             f"weight w of the logit blend w x zero-shot + (1 - w) x prompted, w in {list(g['weights'])}, a w "
             f"below the largest only if it beats it there at alpha {g.get('alpha', 1.0):g}; never test). "
             f"The bundles `export` publishes make the same choice. Mean {100 * g['mean']:.1f}, {100 * p['diff']:+.1f} [{100 * p['lo']:+.1f}, {100 * p['hi']:+.1f}] "
             f"against {OURS}; {verdict} within 1 point of zero-shot. Test accuracy minus zero-shot (points, 95% "
             "bootstrap interval):", "",
             "| domain | w per seed | guarded | guarded - zero_shot | group_private - zero_shot |", "|---|---|---|---|---|"]
    for d in doms:
        ws = ", ".join(f"{g['choices'][str(s)][d]['weight']:g}" for s in seeds)
        a, b = g["vs_zero_shot"][d], g["prompted_vs_zero_shot"][d]
        lines.append(f"| {d} | {ws} | {100 * g['per_domain'][d]:.1f} | {100 * a['diff']:+.1f} "
                     f"[{100 * a['lo']:+.1f}, {100 * a['hi']:+.1f}] | {100 * b['diff']:+.1f} "
                     f"[{100 * b['lo']:+.1f}, {100 * b['hi']:+.1f}] |")
    return lines


def _paired_lines(report: dict) -> list[str]:
    paired = report.get("paired") or {}
    if not paired:
        return []
    seeds = report["seeds"]
    lines = ["", f"Paired difference, variant minus {OURS} (points of mean accuracy); 95% bootstrap interval over "
             f"training seeds x test images ({next(iter(paired.values()))['n_boot']} draws); "
             "grouping is not redrawn (see stability below):", "",
             "| variant | difference | 95% interval | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|" + "---|" * len(seeds)]
    for v, p in paired.items():
        per = " | ".join(f"{100 * p['per_seed'][str(s)]:+.1f}" for s in seeds)
        lines.append(f"| {v} | {100 * p['diff']:+.1f} | [{100 * p['lo']:+.1f}, {100 * p['hi']:+.1f}] | {per} |")
    return lines


def _stability_lines(report: dict) -> list[str]:
    st = report.get("grouping_stability")
    if not st:
        return ["", "Grouping variance is not in the intervals: the groups come from one grouping, not redrawn per "
                "training seed."]
    parts = [f"{k.replace('_', ' ')}: identical {100 * v['identical']:.0f}% of {v['n']}, mean adjusted Rand "
             f"{v['ari_mean']:.2f}" for k, v in st.items() if v.get("n")]
    return ["", "Grouping variance is not in the intervals: the groups come from one grouping, not redrawn per "
            "training seed. Their stability when regrouped from resampled evidence: " + "; ".join(parts) + "."]


def report_markdown(report: dict) -> str:
    seeds = report["seeds"]
    b = report["budget"]
    lines = [f"# Evaluation: top-1 accuracy (%) on the held-out test split, mean ± sd over seeds {seeds}", "",
             f"Budget for every trained variant: {b['steps']} steps, {b['shots_per_label']} shots per label, "
             f"{b['batch_per_task']} samples per task per step, {b['tokens_per_task_per_layer']} prompt tokens per "
             f"task per layer per tower (group_private: {b['group_tokens']} group + {b['private_tokens']} private), "
             f"the same consistency loss (image {b['consistency']['image']}, text {b['consistency']['text']}, KL "
             f"{b['consistency']['kl']}) and label cache (weight per domain from {b['cache_weights']}, chosen on the "
             "calibration split). "
             "prototype's parameters are its fitted class means (nothing trained by gradient).", ""]
    lines += _table(report)
    lines += ["", "Per seed (mean over domains, %):", "", "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for v, r in report["variants"].items():
        lines.append(f"| {v} | " + " | ".join(f"{100 * r['per_seed'][str(s)]['mean']:.1f}" for s in seeds) + " |")
    lines += _paired_lines(report) + _guard_lines(report) + _stability_lines(report)
    if report.get("random_partitions"):
        lines += ["", "random_groups partitions: " + "; ".join(f"seed {s}: {p}" for s, p in
                                                                report["random_partitions"].items())]
    lines += ["", f"Groups: {report['groups']}", "", report["shots_note"]]
    return "\n".join(lines)
