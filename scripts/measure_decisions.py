"""Measure a running server's decisions over HTTP on fresh images: a world seed and an OOD seed.

    python -m service &                      # the embedded default on :8000
    python scripts/measure_decisions.py --url http://127.0.0.1:8000 --world-seed 4242 --ood-seed 777

Prints, per domain, top-1 accuracy, the benign false-flag rate, unsafe recall (flagged), unsafe
caught (flagged or sent to review), review rate and OOD flagged, with 95% Wilson intervals, and
what each manifest claims; the OOD flag rate per kind pooled over domains; the expected
calibration error of `probability` (one-vs-rest, 10 bins); and, with --jpeg-size, the same world
images re-encoded as JPEG at another size: their benign false flags and the share of decisions
(flagged, needs_review, out_of_scope) that change. Then one JSON line. The images are rendered in
memory (`training.synth` for the world, `training.ood` for the probes) and sent to /classify/batch.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import synth  # noqa: E402
from training.calibrate import wilson  # noqa: E402
from training.ood import KINDS, ood_rng, render_ood  # noqa: E402

RATES = ("accuracy", "benign_false_flag", "unsafe_recall", "unsafe_caught", "review_rate", "ood_flagged")


def encode(img: Image.Image, fmt: str = "PNG", size: int | None = None) -> bytes:
    """`img` saved as PNG or JPEG (quality 85), resized to size x size first (bicubic) if that is another size."""
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def world_images(domain: str, labels: list[str], seed: int, per_class: int) -> list[tuple[str, Image.Image]]:
    """(label, image) for `per_class` fresh images of each of `labels` the synthetic world draws."""
    return [(lab, synth.render(domain, lab, synth.image_rng(seed, domain, lab, i)))
            for lab in labels if lab in synth.LABELS for i in range(per_class)]


def calibration_error(pairs: list[tuple[float, bool]], bins: int = 10) -> float:
    """Expected calibration error of (probability, outcome) pairs over equal-width bins."""
    total, err = len(pairs), 0.0
    for b in range(bins):
        inside = [(p, y) for p, y in pairs if b / bins <= p < (b + 1) / bins or (b == bins - 1 and p == 1.0)]
        if inside:
            err += len(inside) / total * abs(sum(p for p, _ in inside) / len(inside)
                                             - sum(y for _, y in inside) / len(inside))
    return err


def decision(r: dict) -> tuple[bool, bool, bool]:
    return r["flagged"], r["needs_review"], r["out_of_scope"]


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


def measure(http: httpx.Client, world_seed: int, ood_seed: int, per_class: int, per_kind: int,
            jpeg_size: int = 0) -> dict:
    """Per-domain rates and OOD flags per kind, measured through the server's /classify/batch."""
    domains = {d["domain"]: d for d in http.get("/domains").json()["domains"]}
    ood = {k: [encode(render_ood(k, ood_rng(ood_seed, k, i))) for i in range(per_kind)] for k in KINDS}
    report: dict = {"world_seed": world_seed, "ood_seed": ood_seed, "domains": {}, "ood_flagged_by_kind": {}}
    ood_hits = {k: [0, 0] for k in KINDS}
    for dom, info in sorted(domains.items()):
        unsafe = {lab["name"]: lab["unsafe"] for lab in info["labels"]}
        imgs = world_images(dom, list(unsafe), world_seed, per_class)
        items = [(lab, encode(im)) for lab, im in imgs]
        res = classify(http, dom, [b for _, b in items])
        top1 = [r["labels"][0]["label"] == lab for (lab, _), r in zip(items, res, strict=True)]  # labels: by score
        pairs = [(x["probability"], x["label"] == lab) for (lab, _), r in zip(items, res, strict=True)
                 for x in r["labels"]]
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
            "claimed": {k: claimed[k]["rate"] for k in RATES if k in claimed and isinstance(claimed[k], dict)},
        }
        r = report["domains"][dom]
        r["accuracy"] = wilson(sum(top1), len(top1))
        if "accuracy" in info["metrics"]:
            r["claimed"]["accuracy"] = info["metrics"]["accuracy"]
        r["calibration_error"] = round(calibration_error(pairs), 4)
        if jpeg_size:
            jres = classify(http, dom, [encode(im, "JPEG", jpeg_size) for _, im in imgs])
            jben = [x for (lab, _), x in zip(items, jres, strict=True) if not unsafe[lab]]
            r["jpeg"] = {"size": jpeg_size, "benign_false_flag": wilson(sum(x["flagged"] for x in jben), len(jben)),
                         "decisions_changed": wilson(sum(decision(a) != decision(b) for a, b in zip(
                             res, jres, strict=True)), len(res)),
                         "out_of_scope": wilson(sum(x["out_of_scope"] for x in jres), len(jres))}
    report["ood_flagged_by_kind"] = {k: wilson(h, n) for k, (h, n) in ood_hits.items()}
    if jpeg_size:
        report["jpeg_pooled"] = {k: pooled_rate([r["jpeg"][k] for r in report["domains"].values()])
                                 for k in ("benign_false_flag", "decisions_changed")}
    return report


def pooled_rate(rates: list[dict]) -> dict:
    """Wilson rates of disjoint samples pooled into one (their counts added)."""
    return wilson(sum(round(r["rate"] * r["n"]) for r in rates), sum(r["n"] for r in rates))


def markdown(report: dict) -> str:
    jpeg = "jpeg" in next(iter(report["domains"].values()))
    lines = [f"World seed {report['world_seed']}, OOD seed {report['ood_seed']}; rates [95% Wilson interval] "
             "(manifest claim)", "", "| domain | accuracy | false flags | recall | caught | review | OOD flagged | "
             "calibration error |" + (" JPEG false flags | JPEG decisions changed |" if jpeg else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if jpeg else "")]

    def cell(r: dict) -> str:
        return f"{r['rate']:.3f} [{r['lo']:.2f}, {r['hi']:.2f}]"

    for dom, r in report["domains"].items():
        cells = [cell(r[k]) + (f" ({r['claimed'][k]:.3f})" if k in r["claimed"] else "") for k in RATES]
        cells.append(f"{r['calibration_error']:.3f}")
        if jpeg:
            cells += [cell(r["jpeg"]["benign_false_flag"]), cell(r["jpeg"]["decisions_changed"])]
        lines.append(f"| {dom} | " + " | ".join(cells) + " |")
    means = {k: sum(r[k]["rate"] for r in report["domains"].values()) / len(report["domains"]) for k in RATES}
    claims = {k: [r["claimed"][k] for r in report["domains"].values() if k in r["claimed"]] for k in RATES}
    ece = sum(r["calibration_error"] for r in report["domains"].values()) / len(report["domains"])
    cells = [f"{means[k]:.3f}" + (f" ({sum(claims[k]) / len(claims[k]):.3f})" if claims[k] else "") for k in RATES]
    cells.append(f"{ece:.3f}")
    if jpeg:
        cells += [f"pooled {cell(report['jpeg_pooled'][k])}" for k in ("benign_false_flag", "decisions_changed")]
    lines.append("| **mean** | " + " | ".join(cells) + " |")
    outside = [f"{dom} {k} claimed {r['claimed'][k]:.3f} outside [{r[k]['lo']:.3f}, {r[k]['hi']:.3f}]"
               for dom, r in report["domains"].items() for k in RATES
               if k in r["claimed"] and not r[k]["lo"] <= r["claimed"][k] <= r[k]["hi"]]
    lines += ["", "Claims outside the fresh sample's 95% interval: " + ("; ".join(outside) or "none")]
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
    p.add_argument("--jpeg-size", type=int, default=0, help="also send the world images as JPEG at this size "
                                                             "(0: skip)")
    ns = p.parse_args(argv)
    with httpx.Client(base_url=ns.url, timeout=120) as http:
        report = measure(http, ns.world_seed, ns.ood_seed, ns.per_class, ns.per_kind, ns.jpeg_size)
    print(markdown(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
