"""Routing accuracy of a live server on a synthetic world: exact domain, planted group, confusion matrix.

    python -m training synth --out /tmp/w --seed 5151 --per-class 12
    python scripts/measure_routing.py --url http://127.0.0.1:8000 --world /tmp/w

Every image goes through /classify/batch without a domain, so the server's router picks it; the
answer's `domain` is compared with the folder the image came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

from promptclip.router import format_confusion, route_metrics
from training.synth import GROUPS


def routed_domains(url: str, files: list[Path], batch: int = 32) -> tuple[list[str], list[dict]]:
    out, routing = [], []
    with httpx.Client(base_url=url, timeout=120) as http:
        for i in range(0, len(files), batch):
            chunk = files[i:i + batch]
            r = http.post("/classify/batch", files=[("images", (f.name, f.read_bytes(), "image/png")) for f in chunk])
            r.raise_for_status()
            for item in r.json()["results"]:
                if item["status"] != 200:
                    raise RuntimeError(f"item failed: {item['error']}")
                out.append(item["result"]["domain"])
                routing.append(item["result"]["routing"])
    return out, routing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--world", type=Path, required=True, help="DATA/<domain>/<label>/*.png")
    a = ap.parse_args()
    domains = sorted(p.name for p in a.world.iterdir() if p.is_dir())
    files = [f for d in domains for f in sorted((a.world / d).rglob("*.png"))]
    truth = [f.relative_to(a.world).parts[0] for f in files]
    pred, routing = routed_domains(a.url, files)
    m = route_metrics(pred, truth, domains, GROUPS)
    low = sum(r["low_confidence"] for r in routing)
    print(format_confusion(m))
    print(json.dumps({"images": m["n"], "accuracy": round(m["accuracy"], 4),
                      "group_accuracy": round(m["group_accuracy"], 4), "low_confidence": low,
                      "router": routing[0]["router"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
