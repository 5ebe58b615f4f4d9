"""Measure a running server's decisions over HTTP on fresh images: a world seed and an OOD seed.

    python -m service &                      # the embedded default on :8000
    python scripts/measure_decisions.py --url http://127.0.0.1:8000 --world-seed 4242 --ood-seed 777

Prints, per domain, the benign false-flag rate, unsafe recall (flagged), unsafe caught (flagged
or sent to review), review rate and OOD flagged, with 95% Wilson intervals, the OOD flag rate per
kind pooled over domains, and what each manifest claims; then one JSON line. The images are
rendered in memory (`training.synth` for the world, `training.ood` for the probes), PNG-encoded
and sent to /classify/batch.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import synth  # noqa: E402
from training.calibrate import wilson  # noqa: E402
from training.ood import KINDS, ood_rng, render_ood  # noqa: E402

RATES = ("benign_false_flag", "unsafe_recall", "unsafe_caught", "review_rate", "ood_flagged")


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def classify(http: httpx.Client, domain: str, images: list[bytes], chunk: int = 32) -> list[dict]:
    out = []
    for i in range(0, len(images), chunk):
        part = images[i:i + chunk]
        r = http.post("/classify/batch", files=[("images", (f"{k}.png", b)) for k, b in enumerate(part)],
                      data={"domains": domain})
        r.raise_for_status()
        for res in r.json()["results"]:
            if res["status"] != 200:
                raise RuntimeError(f"{domain}: {res['error']}")
            out.append(res["result"])
    return out


def measure(http: httpx.Client, world_seed: int, ood_seed: int, per_class: int, per_kind: int) -> dict:
    """Per-domain rates and OOD flags per kind, measured through the server's /classify/batch."""
    domains = {d["domain"]: d for d in http.get("/domains").json()["domains"]}
    ood = {k: [_png(render_ood(k, ood_rng(ood_seed, k, i))) for i in range(per_kind)] for k in KINDS}
    report: dict = {"world_seed": world_seed, "ood_seed": ood_seed, "domains": {}, "ood_flagged_by_kind": {}}
    ood_hits = {k: [0, 0] for k in KINDS}
    for dom, info in sorted(domains.items()):
        unsafe = {lab["name"]: lab["unsafe"] for lab in info["labels"]}
        items = [(lab, _png(synth.render(dom, lab, synth.image_rng(world_seed, dom, lab, i))))
                 for lab in unsafe if lab in synth.LABELS for i in range(per_class)]
        res = classify(http, dom, [b for _, b in items])
        ben = [r for (lab, _), r in zip(items, res, strict=True) if not unsafe[lab]]
        uns = [r for (lab, _), r in zip(items, res, strict=True) if unsafe[lab]]
        ood_res = {k: classify(http, dom, imgs) for k, imgs in ood.items()}
        for k, rs in ood_res.items():
            ood_hits[k][0] += sum(r["flagged"] for r in rs)
            ood_hits[k][1] += len(rs)
        pooled = [r for rs in ood_res.values() for r in rs]
        claimed = info["metrics"].get("decisions", {})
        report["domains"][dom] = {
            "benign_false_flag": wilson(sum(r["flagged"] for r in ben), len(ben)),
            "unsafe_recall": wilson(sum(r["flagged"] for r in uns), len(uns)),
            "unsafe_caught": wilson(sum(r["flagged"] or r["needs_review"] for r in uns), len(uns)),
            "review_rate": wilson(sum(r["needs_review"] for r in res), len(res)),
            "ood_flagged": wilson(sum(r["flagged"] for r in pooled), len(pooled)),
            "out_of_scope_flagged": sum(r["flagged"] for r in res + pooled if r["out_of_scope"]),
            "claimed": {k: claimed[k]["rate"] for k in RATES if k in claimed},
        }
    report["ood_flagged_by_kind"] = {k: wilson(h, n) for k, (h, n) in ood_hits.items()}
    return report


def markdown(report: dict) -> str:
    lines = [f"World seed {report['world_seed']}, OOD seed {report['ood_seed']}; rates [95% Wilson interval] "
             "(manifest claim)", "", "| domain | false flags | recall | caught | review | OOD flagged |",
             "|---|---|---|---|---|---|"]
    for dom, r in report["domains"].items():
        cells = [f"{r[k]['rate']:.3f} [{r[k]['lo']:.2f}, {r[k]['hi']:.2f}]" + (
            f" ({r['claimed'][k]:.3f})" if k in r["claimed"] else "") for k in RATES]
        lines.append(f"| {dom} | " + " | ".join(cells) + " |")
    means = {k: sum(r[k]["rate"] for r in report["domains"].values()) / len(report["domains"]) for k in RATES}
    lines.append("| **mean** | " + " | ".join(f"{means[k]:.3f}" for k in RATES) + " |")
    lines += ["", "OOD flagged per kind, pooled over domains: " + ", ".join(
        f"{k} {v['rate']:.3f}" for k, v in report["ood_flagged_by_kind"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--world-seed", type=int, default=4242, help="synth world seed (never one the bundles saw)")
    p.add_argument("--ood-seed", type=int, default=777, help="OOD probe seed (the manifests use 0)")
    p.add_argument("--per-class", type=int, default=20, help="images per (domain, label)")
    p.add_argument("--per-kind", type=int, default=20, help="OOD images per kind, sent to every domain")
    ns = p.parse_args(argv)
    with httpx.Client(base_url=ns.url, timeout=120) as http:
        report = measure(http, ns.world_seed, ns.ood_seed, ns.per_class, ns.per_kind)
    print(markdown(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
