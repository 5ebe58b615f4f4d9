"""How far a client's trip (resized, saved as JPEG) moves the frozen tiny CLIP's image features.

    python scripts/measure_trip_stability.py                            # the embedded tiny CLIP
    python scripts/measure_trip_stability.py --weights W.safetensors    # e.g. pretrain-tiny --out W.safetensors
    python scripts/measure_trip_stability.py --blur 0.6                 # inputs low-passed, sigma 0.6 px

No prompts and no bundle: the question is how much the frozen tower itself reads a re-encoded
image differently. Per domain of the synthetic world, a nearest-class-mean probe is fitted on
fresh PNG images (--fit-seed) and asked about other fresh images (--world-seed) sent as PNG, then
as JPEG at their own 48 px, as PNG at 96 px, as JPEG at 96 and at 224 px (bicubic). Prints the
probe's accuracy on the PNGs, and per trip the share of its answers that change, with 95% Wilson
intervals; then the pooled means, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torchvision.transforms import Compose, GaussianBlur

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_decisions import encode, world_images  # noqa: E402

from promptclip import ModelSpec, load_clip  # noqa: E402
from promptclip.images import decode_rgb  # noqa: E402
from promptclip.loading import _load_embedded_state  # noqa: E402
from training import synth  # noqa: E402
from training.calibrate import wilson  # noqa: E402

TRIPS = {"jpeg48": ("JPEG", None), "png96": ("PNG", 96), "jpeg96": ("JPEG", 96), "jpeg224": ("JPEG", 224)}


def features(clip, images: list[bytes]) -> torch.Tensor:
    with torch.inference_mode():
        x = torch.stack([clip.preprocess(decode_rgb(b)) for b in images])
        return clip.model.encode_image(x, normalize=True).float()


def with_blur(clip, sigma: float):
    """`clip` with a Gaussian low-pass of `sigma` pixels (radius ceil(3 sigma)) after its preprocess."""
    if sigma > 0:
        clip.preprocess = Compose([clip.preprocess, GaussianBlur(2 * math.ceil(3 * sigma) + 1, sigma)])
    return clip


def measure(clip, fit_seed: int, world_seed: int, per_class: int) -> dict:
    labels = list(synth.LABELS)
    out = {}
    for dom in synth.DOMAINS:
        fit = world_images(dom, labels, fit_seed, 20)
        f, y_fit = features(clip, [encode(im) for _, im in fit]), torch.tensor([labels.index(la) for la, _ in fit])
        means = torch.nn.functional.normalize(torch.stack([f[y_fit == i].mean(0) for i in range(len(labels))]), dim=1)
        ev = world_images(dom, labels, world_seed, per_class)
        y = torch.tensor([labels.index(la) for la, _ in ev])
        base = (features(clip, [encode(im) for _, im in ev]) @ means.T).argmax(1)
        row = {"accuracy": wilson(int((base == y).sum()), len(y))}
        for name, (fmt, size) in TRIPS.items():
            pred = (features(clip, [encode(im, fmt, size) for _, im in ev]) @ means.T).argmax(1)
            row[name] = wilson(int((pred != base).sum()), len(y))
        out[dom] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="", help="tiny CLIP safetensors (default: the embedded one)")
    p.add_argument("--fit-seed", type=int, default=101, help="world seed of the probe's class means")
    p.add_argument("--world-seed", type=int, default=27183, help="world seed of the images asked")
    p.add_argument("--blur", type=float, default=0.0,
                   help="blur every input by a Gaussian of this sigma, in pixels at the model's input (default 0: none)")
    p.add_argument("--per-class", type=int, default=24, help="images asked per (domain, label)")
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    clip = load_clip(ModelSpec())
    if ns.weights:
        clip.model.load_state_dict(_load_embedded_state(Path(ns.weights)), strict=True)
    clip = with_blur(clip, ns.blur)
    report = measure(clip, ns.fit_seed, ns.world_seed, ns.per_class)
    cell = lambda w: f"{w['rate']:.3f} [{w['lo']:.2f}, {w['hi']:.2f}]"  # noqa: E731
    print("| domain | probe accuracy | " + " | ".join(f"{t}: answers changed" for t in TRIPS) + " |")
    print("|---|---|" + "---|" * len(TRIPS))
    for dom, row in report.items():
        print(f"| {dom} | {cell(row['accuracy'])} | " + " | ".join(cell(row[t]) for t in TRIPS) + " |")
    pooled = {k: sum(r[k]["rate"] for r in report.values()) / len(report) for k in ["accuracy", *TRIPS]}
    print("| **mean** | " + " | ".join(f"{v:.3f}" for v in pooled.values()) + " |")
    print(json.dumps({"weights": ns.weights or "embedded", "blur": ns.blur, "domains": report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
