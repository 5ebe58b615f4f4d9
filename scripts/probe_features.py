"""How much each style's frozen image features know: zero-shot per caption template vs a linear probe.

Usage: python scripts/probe_features.py [--weights tiny-clip.safetensors] [--per-class 36]

Renders fresh images of every style (a seed no world uses), encodes them with the bare tiny
CLIP, and prints per style: zero-shot top-1 with the photo / drawing / cartoon templates, and
a nearest-class-mean probe with 4 and 16 shots per label (tested on the rest). A style whose
probe is high but whose zero-shot is low is where prompts can help: the features are there,
the text side does not reach them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import promptclip.loading as loading
from promptclip import ModelSpec, PromptedCLIP, load_clip
from training import synth


def probe(f: torch.Tensor, y: torch.Tensor, shots: int, test_from: int) -> float:
    """Nearest class mean: the first `shots` images of each label are its prototype; no tuning."""
    classes = y.unique()
    protos = F.normalize(torch.stack([f[y == c][:shots].mean(0) for c in classes]), dim=-1)
    te = torch.cat([torch.nonzero(y == c).flatten()[test_from:] for c in classes])
    return float((classes[(f[te] @ protos.T).argmax(1)] == y[te]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="an embedded-format tiny CLIP (default: the shipped one)")
    ap.add_argument("--per-class", type=int, default=36, help="images per label per style (>= 20)")
    ns = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if ns.weights:
        loading.EMBEDDED_WEIGHTS = ns.weights
    clip = load_clip(ModelSpec())
    enc, labels = PromptedCLIP(clip.model), list(synth.LABELS)
    with torch.no_grad():
        text = {k: F.normalize(enc.encode_text(clip.tokenizer([t.format(n) for n in labels])), dim=-1)
                for k, t in synth.CAPTIONS.items()}
    print(f"{'style':10s} " + " ".join(f"zs:{k:8s}" for k in synth.CAPTIONS) + "  probe@4  probe@16")
    for d in synth.DOMAINS:
        imgs = [clip.preprocess(synth.render(d, lab, synth.image_rng(99, d, lab, i)))
                for lab in labels for i in range(ns.per_class)]
        y = torch.arange(len(labels)).repeat_interleave(ns.per_class)
        with torch.no_grad():
            f = F.normalize(enc.encode_image(torch.stack(imgs)), dim=-1)
        zs = [float(((f @ t.T).argmax(1) == y).float().mean()) for t in text.values()]
        print(f"{d:10s} " + " ".join(f"{100 * a:11.1f}" for a in zs)
              + f"  {100 * probe(f, y, 4, 20):7.1f}  {100 * probe(f, y, 16, 20):8.1f}", flush=True)


if __name__ == "__main__":
    main()
