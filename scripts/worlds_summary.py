"""Issue 11's criteria over several `fit` runs: one table per world, then the mean over worlds.

Usage: python scripts/worlds_summary.py DATA:RUN [DATA:RUN ...]
Per world: groups.json vs planted_groups.json, every variant's mean with its paired difference to
group_private (95% bootstrap interval from report.json), the worst domain against zero-shot. Over
worlds: group_private minus every other variant (at least +1 point is the goal), and minus
zero-shot (at least +5). Prints markdown; exits 1 if a criterion fails.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

OURS = "group_private"


def world_lines(data: Path, run: Path) -> tuple[list[str], dict[str, float], list[bool]]:
    rep = json.loads((run / "report.json").read_text())
    planted = json.loads((data / "planted_groups.json").read_text())["groups"]
    groups = json.loads((run / "groups.json").read_text())["groups"]
    same = {frozenset(g) for g in groups} == {frozenset(g) for g in planted}
    var, paired = rep["variants"], rep.get("paired", {})
    means = {v: 100 * r["mean"] for v, r in var.items()}
    gp, zs = var[OURS]["per_domain"], var["zero_shot"]["per_domain"]
    drop, worst = min((100 * (gp[d] - zs[d]), d) for d in gp)
    lines = [f"### {data.name} (groups {'= planted' if same else f'{groups} != planted {planted}'})", "",
             "| variant | mean ± sd | minus group_private [95% CI] |", "|---|---|---|"]
    for v, r in var.items():
        p = paired.get(v)
        ci = f"{100 * p['diff']:+.1f} [{100 * p['lo']:+.1f}, {100 * p['hi']:+.1f}]" if p else ""
        lines.append(f"| {v} | {means[v]:.1f} ± {100 * r['mean_sd']:.1f} | {ci} |")
    within = all(means[OURS] >= m - 1 for v, m in means.items() if v != OURS)
    lines += ["", f"worst domain vs zero-shot: {worst} {drop:+.1f}; group_private within 1 point of every "
                  f"variant: {'yes' if within else 'no'}", ""]
    return lines, means, [same, drop >= -3, within]


def pooled_interval(pairs: list[str], variant: str) -> str:
    """Approximate 95% interval of the mean over worlds of group_private minus `variant`: the worlds
    are independent, so the per-world bootstrap intervals combine as normal errors (se = width / 3.92)."""
    paired = [json.loads((Path(pair.split(":")[1]) / "report.json").read_text()).get("paired", {}).get(variant)
              for pair in pairs]
    if variant == OURS or not all(paired):
        return ""
    diff = -statistics.mean(100 * p["diff"] for p in paired)
    se = sum((100 * (p["hi"] - p["lo"]) / 3.92) ** 2 for p in paired) ** 0.5 / len(paired)
    return f" [{diff - 1.96 * se:+.1f}, {diff + 1.96 * se:+.1f}]"


def main(pairs: list[str]) -> int:
    out, all_means, ok = [], [], []
    for pair in pairs:
        data, run = (Path(x) for x in pair.split(":"))
        lines, means, checks = world_lines(data, run)
        out += lines
        all_means.append(means)
        ok += checks
    variants = list(all_means[0])
    avg = {v: statistics.mean(m[v] for m in all_means) for v in variants}
    out += [f"### Mean over {len(all_means)} worlds", "",
            "| variant | mean | group_private minus it [approx. 95% CI] |", "|---|---|---|"]
    out += [f"| {v} | {avg[v]:.1f} | {avg[OURS] - avg[v]:+.1f}{pooled_interval(pairs, v)} |" for v in variants]
    above = all(avg[OURS] >= avg[v] + 1 for v in variants if v not in (OURS, "zero_shot"))
    lift = avg[OURS] >= avg["zero_shot"] + 5
    out += ["", f"group_private >= every other variant + 1 on the mean: {'PASS' if above else 'FAIL'}; "
                f">= zero-shot + 5: {'PASS' if lift else 'FAIL'}; per-world checks (groups, domains, within 1): "
                f"{sum(ok)}/{len(ok)} pass"]
    print("\n".join(out))
    return 0 if above and lift and all(ok) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
