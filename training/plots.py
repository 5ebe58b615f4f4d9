"""Decision plots and tables beside report.md: per domain, unsafe vs benign and in vs out of scope.

Curves and areas are scikit-learn's (`roc_curve`, `precision_recall_curve`, `auc`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from .config import DecisionConfig


def _unsafe_score(d: dict) -> float:
    """The flagging score: largest unsafe probability, 0 when out of scope (never flagged)."""
    return max((lab["probability"] for lab in d["labels"] if lab["unsafe"]), default=0.0) if d["in_scope"] else 0.0


def _scored(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1: positive) and scores of the positives followed by the negatives, as scikit-learn takes them."""
    return np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]


def roc(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) over every cut, highest first, from (0, 0)."""
    fpr, tpr, _ = roc_curve(*_scored(pos, neg), drop_intermediate=False)
    return fpr, tpr


def pr(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) over every cut, highest first (scikit-learn's curve without its (0, 1) end point)."""
    precision, recall, _ = precision_recall_curve(*_scored(pos, neg), drop_intermediate=False)
    return recall[::-1][1:], precision[::-1][1:]


def decision_plots(curves: dict[str, dict], out_dir: Path) -> list[Path]:
    """One PNG per domain: ROC and PR of unsafe vs benign, ROC of in vs out of scope, operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for dom, c in curves.items():
        unsafe = np.array(c["unsafe"])[np.array(c["test_y"])]
        u = np.array([_unsafe_score(d) for d in c["test"]])
        flag = np.array([d["flagged"] for d in c["test"]])
        caught = np.array([d["flagged"] or d["needs_review"] for d in c["test"]])
        ood = [d for items in c["ood"].values() for d in items]
        s_in = np.array([d["scope_score"] for d in c["test"]])
        s_out = np.array([d["scope_score"] for d in ood])
        fig, ax = plt.subplots(1, 3, figsize=(13, 4))
        if unsafe.any() and (~unsafe).any():
            _unsafe_panels(ax, dom, u, unsafe, flag, caught)
        else:  # nothing to flag (or no benign image): no curve to draw, and no NaN AUC
            for a, title in zip(ax[:2], (f"{dom}: unsafe vs benign (test)", "precision-recall, unsafe"), strict=True):
                a.text(0.5, 0.5, "no unsafe label in this domain" if not unsafe.any() else "no benign test image",
                       ha="center", va="center", transform=a.transAxes)
                a.set(title=title, xticks=[], yticks=[])
        fpr, tpr = roc(s_in, s_out) if len(s_out) else (np.array([0, 1]), np.array([0, 1]))
        ax[2].plot(fpr, tpr, lw=1.5, label=f"AUC {auc(fpr, tpr):.2f}")
        ins = np.array([d["in_scope"] for d in c["test"]])
        oins = np.array([d["in_scope"] for d in ood])
        ax[2].plot([oins.mean() if len(oins) else 0], [ins.mean()], "o", color="C3", label="scope cut")
        ax[2].set(title="in scope (test) vs OOD probe", xlabel="OOD kept in scope", ylabel="in-domain kept")
        for a in ax:
            a.grid(alpha=0.3)
            if a.get_legend_handles_labels()[0]:
                a.legend(loc="lower right", fontsize=8)
        for a in (ax[0], ax[2]):
            a.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        fig.tight_layout()
        path = out_dir / f"{dom}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _unsafe_panels(ax, dom: str, u: np.ndarray, unsafe: np.ndarray, flag: np.ndarray, caught: np.ndarray) -> None:
    """ROC and precision-recall of the flagging score, unsafe vs benign test images, operating points marked."""
    fpr, tpr = roc(u[unsafe], u[~unsafe])
    ax[0].plot(fpr, tpr, lw=1.5, label=f"AUC {auc(fpr, tpr):.2f}")
    ax[0].plot([flag[~unsafe].mean()], [flag[unsafe].mean()], "o", color="C3", label="flag threshold")
    ax[0].plot([caught[~unsafe].mean()], [caught[unsafe].mean()], "s", color="C2", label="flag or review")
    ax[0].set(title=f"{dom}: unsafe vs benign (test)", xlabel="benign flagged (FPR)", ylabel="unsafe recall")
    rec, prec = pr(u[unsafe], u[~unsafe])
    ax[1].plot(rec, prec, lw=1.5)
    tp = (flag & unsafe).sum()
    ax[1].plot([flag[unsafe].mean()], [tp / max(1, flag.sum())], "o", color="C3", label="flag threshold")
    ax[1].set(title="precision-recall, unsafe", xlabel="recall", ylabel="precision", ylim=(0, 1.02))


def _cell(r: dict) -> str:
    return "n/a" if r["rate"] is None else f"{r['rate']:.3f} [{r['lo']:.2f}, {r['hi']:.2f}]"


def decisions_markdown(out: dict[str, dict], cfg: DecisionConfig) -> str:
    """Per-domain decision rates on the test split and the OOD probe set, 95% Wilson intervals."""
    lines = [f"# Decisions on the held-out test split (targets: benign false flags <= {cfg.max_false_flag}, "
             f"caught >= {cfg.review_target} within a review budget of {cfg.review_budget}, "
             f"{cfg.scope_keep:.0%} of in-domain images in scope)", "",
             "Rates with 95% Wilson intervals. OOD: the project's probe set (every kind pooled). Zero-shot weight: "
             "the share of frozen CLIP's prediction in the domain's label distribution, chosen on calibration "
             "(0: prompted only).", "",
             "| domain | accuracy | false flags (benign) | recall (unsafe flagged) | caught (flag or review) | "
             "review rate | in scope | OOD flagged | OOD in scope | can flag | false-flag target shown | "
             "review target met | zero-shot weight |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dom, o in out.items():
        r = o["rates"]
        met = r["calibration_targets_met"]
        lines.append(f"| {dom} | " + " | ".join(_cell(r[k]) for k in (
            "accuracy_interval", "benign_false_flag", "unsafe_recall", "unsafe_caught", "review_rate", "in_scope",
            "ood_flagged", "ood_in_scope")) + " | " + " | ".join(
            "yes" if v else "no" for v in (r["can_flag"], met["max_false_flag"], met["review_target"]))
            + f" | {r.get('guard_weight', 0.0):g} |")
    kinds = list(next(iter(out.values()))["rates"]["ood_by_kind"])
    lines += ["", "Scope score per OOD probe kind (OpenOOD's metrics: AUROC of in-domain test vs the kind, FPR at "
              "95% in-domain kept, and the flag rate at the shipped cut):", "",
              "| domain | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for dom, o in out.items():
        r = o["rates"]
        lines.append(f"| {dom} | " + " | ".join(
            f"{r['ood_by_kind'][k]['auroc']:.3f} / {r['ood_by_kind'][k]['fpr95']:.3f} / "
            f"{r['ood_flagged_by_kind'][k]['rate']:.3f}" if r["ood_by_kind"][k]["auroc"] is not None else "n/a"
            for k in kinds) + " |")
    return "\n".join(lines)
