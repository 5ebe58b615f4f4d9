"""Which part of "the same image as a JPEG at another size" changes a running server's decisions.

    python -m service &                      # the embedded default on :8000
    python scripts/measure_resize_stability.py --url http://127.0.0.1:8000 --world-seed 4242

Sends fresh world images (`training.synth`, rendered in memory) to /classify/batch as PNG, then
again three ways, and prints per domain the share of decisions (flagged, needs_review,
out_of_scope) and of top labels that change against the PNG, with 95% Wilson intervals:
- `jpeg` at the image's own size (compression alone);
- `png` at --size (one more resampling alone: resized there, and back by the model's preprocess);
- `jpeg` at --size (both: what measure_decisions.py's --jpeg-size measures).
Then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_decisions import classify, decision, encode, pooled_rate, world_images  # noqa: E402

from training.calibrate import wilson  # noqa: E402


def measure(http: httpx.Client, world_seed: int, per_class: int, size: int) -> dict:
    domains = {d["domain"]: d for d in http.get("/domains").json()["domains"]}
    report: dict = {"world_seed": world_seed, "size": size, "domains": {}}
    for dom, info in sorted(domains.items()):
        imgs = [im for _, im in world_images(dom, [lab["name"] for lab in info["labels"]], world_seed, per_class)]
        own = imgs[0].size[0]
        base = classify(http, dom, [encode(im) for im in imgs])
        row = {}
        for name, (side, fmt) in {f"jpeg{own}": (own, "JPEG"), f"png{size}": (size, "PNG"),
                                  f"jpeg{size}": (size, "JPEG")}.items():
            res = classify(http, dom, [encode(im, fmt, side) for im in imgs])
            pairs = list(zip(base, res, strict=True))
            row[name] = {"decisions_changed": wilson(sum(decision(a) != decision(b) for a, b in pairs), len(pairs)),
                         "top_label_changed": wilson(sum(a["labels"][0]["label"] != b["labels"][0]["label"]
                                                         for a, b in pairs), len(pairs))}
        report["domains"][dom] = row
    report["pooled"] = {name: {k: pooled_rate([r[name][k] for r in report["domains"].values()])
                               for k in ("decisions_changed", "top_label_changed")} for name in row}
    return report


def markdown(report: dict) -> str:
    names = list(next(iter(report["domains"].values())))
    lines = ["| domain | " + " | ".join(f"{n}: decisions changed | {n}: top label changed" for n in names) + " |",
             "|---|" + "---|---|" * len(names)]
    cell = lambda w: f"{w['rate']:.3f} [{w['lo']:.2f}, {w['hi']:.2f}]"  # noqa: E731
    for dom, row in [*report["domains"].items(), ("**pooled**", report["pooled"])]:
        lines.append(f"| {dom} | " + " | ".join(f"{cell(row[n]['decisions_changed'])} | "
                                                 f"{cell(row[n]['top_label_changed'])}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--world-seed", type=int, default=4242, help="synth world seed (never one the bundles saw)")
    p.add_argument("--per-class", type=int, default=20, help="images per (domain, label)")
    p.add_argument("--size", type=int, default=96, help="the other size, in pixels (the world's images are 48)")
    ns = p.parse_args(argv)
    with httpx.Client(base_url=ns.url, timeout=120) as http:
        report = measure(http, ns.world_seed, ns.per_class, ns.size)
    print(markdown(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
