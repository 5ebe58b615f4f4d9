"""Check a `fit` run against the per-world acceptance criteria: grouping, accuracy against the
baselines, and no served domain below zero-shot.

The criterion over worlds (group_private at least 1 point above every other variant on the mean
over worlds) needs several runs; this script checks one world and prints the paired intervals.

Usage: python scripts/check_acceptance.py DATA RUN [STORE]
With STORE, every domain's CURRENT bundle is also loaded through the core loader against the
run's base model (the embedded tiny CLIP unless run.json names another). Prints one line per criterion (PASS/FAIL with the numbers) and exits 1 if any fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def bundle_checks(run: Path, store: Path) -> list[tuple[str, bool, str]]:
    from promptclip import ModelSpec, PromptStore, load_clip

    model = json.loads((run / "run.json").read_text()).get("model", {})
    spec = ModelSpec(model=model.get("model", "tiny-clip"), pretrained=model.get("pretrained", "embedded"))
    base, st, out = load_clip(spec).info, PromptStore(store), []
    for domain in st.domains():
        try:
            b = st.load_current(domain, base)
            out.append((f"bundle {domain} loads", True, f"{b.manifest.version}, group {b.manifest.group['id']} {b.manifest.group['members']}"))
        except Exception as e:  # noqa: BLE001 (report every refusal)
            out.append((f"bundle {domain} loads", False, f"{type(e).__name__}: {e}"))
    return out or [("bundles in store", False, f"none under {store}")]


def served_accuracy_checks(store: Path, zero_shot: dict[str, float]) -> list[tuple[str, bool, str]]:
    """Each published bundle's test accuracy (its manifest: the served decision path, zero-shot guard
    included) against zero-shot on the same test split."""
    from promptclip import PromptStore

    st, rows = PromptStore(store), []
    for d in st.domains():
        m = st.load_current(d).manifest
        acc = 100 * m.metrics["accuracy"]
        rows.append((d, acc - 100 * zero_shot[d], m.decision.get("guard", {}).get("weight", 0.0)))
    worst = min(rows, key=lambda r: r[1])
    return [("published bundles: no domain more than 1 point below zero-shot (manifest test accuracy)",
             worst[1] >= -1, ", ".join(f"{d} {x:+.1f} (w {w:g})" for d, x, w in rows))]


def main(data: Path, run: Path, store: Path | None = None) -> int:
    planted = json.loads((data / "planted_groups.json").read_text())["groups"]
    sim = json.loads((run / "similarity.json").read_text())
    groups = json.loads((run / "groups.json").read_text())["groups"]
    rep = json.loads((run / "report.json").read_text())["variants"]
    tasks, m = sim["tasks"], sim["matrix"]
    s = {(a, b): m[i][j] for i, a in enumerate(tasks) for j, b in enumerate(tasks)}
    group_of = {t: gi for gi, g in enumerate(planted) for t in g}
    worst = []
    for a in tasks:
        for b in tasks:
            if a < b and group_of[a] == group_of[b]:
                cross = max(s[x, y] for x in tasks for y in tasks
                            if x != y and (x in (a, b)) and group_of[x] != group_of[y])
                worst.append((s[a, b] - cross, a, b, s[a, b], cross))
    margin = min(worst)
    checks = [
        ("planted pairs above every cross pair involving them", margin[0] > 0,
         f"tightest: {margin[1]}-{margin[2]} {margin[3]:.3f} vs cross {margin[4]:.3f}"),
        ("groups.json equals planted partition", {frozenset(g) for g in groups} == {frozenset(g) for g in planted},
         f"{groups}"),
    ]
    gp, zs = rep["group_private"], rep["zero_shot"]
    mean = {k: 100 * v["mean"] for k, v in rep.items()}
    others = {k: v for k, v in mean.items() if k != "group_private"}
    worst_drop = min((100 * (gp["per_domain"][d] - zs["per_domain"][d]), d) for d in gp["per_domain"])
    checks += [
        ("group_private >= zero_shot + 5 (mean)", mean["group_private"] >= mean["zero_shot"] + 5,
         f"{mean['group_private']:.1f} vs {mean['zero_shot']:.1f}"),
        ("group_private >= zero_shot + 12 (sketch)",
         100 * gp["per_domain"]["sketch"] >= 100 * zs["per_domain"]["sketch"] + 12,
         f"{100 * gp['per_domain']['sketch']:.1f} vs {100 * zs['per_domain']['sketch']:.1f}"),
        ("group_private: no domain more than 3 points below zero-shot", worst_drop[0] >= -3,
         f"worst {worst_drop[1]} {worst_drop[0]:+.1f}"),
        ("group_private no more than 1 point below any other variant (per world)",
         all(mean["group_private"] >= v - 1 for v in others.values()),
         ", ".join(f"{k} {v:.1f}" for k, v in mean.items())),
        ("all_shared <= group_private - 2", mean["all_shared"] <= mean["group_private"] - 2,
         f"{mean['all_shared']:.1f} vs {mean['group_private']:.1f}"),
        ("private_only <= group_private + 0.5", mean["private_only"] <= mean["group_private"] + 0.5,
         f"{mean['private_only']:.1f} vs {mean['group_private']:.1f}"),
        ("group_private has the best mean", max(mean, key=mean.get) == "group_private",
         ", ".join(f"{k} {v:.1f}" for k, v in mean.items())),
    ]
    guarded = json.loads((run / "report.json").read_text()).get("guarded")
    if guarded:
        g_drop = min((100 * (guarded["per_domain"][d] - zs["per_domain"][d]), d) for d in guarded["per_domain"])
        checks.append(("guarded (what the bundles serve): no domain more than 1 point below zero-shot",
                       g_drop[0] >= -1, f"worst {g_drop[1]} {g_drop[0]:+.1f}; weights "
                       + str({d: c["weight"] for d, c in guarded["choices"]["0"].items()})))
    if store is not None:
        checks += served_accuracy_checks(store, zs["per_domain"])
    paired = json.loads((run / "report.json").read_text()).get("paired", {})
    for k, p in paired.items():
        print(f"INFO  {k} - group_private: {100 * p['diff']:+.1f} [{100 * p['lo']:+.1f}, {100 * p['hi']:+.1f}]")
    if store is not None:
        checks += bundle_checks(run, store)
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None))
