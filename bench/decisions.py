"""The decision path's cost per image, beside the image tower it follows, on the shipped demo bundles.

    python -m bench decisions [--batch 1 16 64] [--device cpu]

For a mixed-domain micro-batch of the demo's seven domains, measured interleaved in one run:

* ``encode``: the prompted image tower with layer taps (what the engine runs);
* ``bare``: the frozen tower over the rows whose domain has a zero-shot guard (the engine runs it
  beside the prompted pass);
* ``score``: `score_batch` with the fitted scope models (labels, negatives, every Gaussian signal);
* ``score_no_scope``: the same banks without scope models;
* ``decide``: `decide_batch` over the padded rule tensors;
* ``answers``: `Decisions.answers`, the only per-row Python (host copies and JSON-ready dicts).

Prints microseconds per image and each step's share of the encoder, then one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from bench.timing import interleaved, machine
from promptclip import (
    Banks,
    ModelSpec,
    PromptedCLIP,
    PromptStore,
    bundle_bank,
    decide_batch,
    load_clip,
    score_batch,
)
from promptclip.runner import ModelRunner

STORE = Path(__file__).resolve().parents[1] / "prompts_store"


def fixtures(device: str, batch: int):
    clip = load_clip(ModelSpec(device=device))
    enc = PromptedCLIP(clip.model)
    store = PromptStore(STORE)
    domains = [d for d in store.domains() if not d.startswith("_")]
    bundles = [store.load_current(d, clip.info) for d in domains]
    banks = [bundle_bank(b, enc, clip.tokenizer, device)[0] for b in bundles]
    rows = torch.arange(batch, device=device) % len(banks)
    prompts = torch.stack([b.vision_prompts() for b in bundles]).to(device)[rows]  # (B, depth, n, Wv)
    images = torch.randn(batch, 3, clip.info.image_size, clip.info.image_size, device=device)
    return enc, Banks.stack(banks, device), Banks.stack([replace(b, scope=None) for b in banks], device), rows, \
        prompts, images, float(enc.logit_scale)


def measure(device: str, batch: int, reps: int) -> dict:
    enc, banks, no_scope, rows, prompts, images, scale = fixtures(device, batch)
    guarded = torch.tensor([banks.guarded(r) for r in rows.tolist()], device=device)
    # the engine's bare pass, over the guarded rows only (none at batch 1: the first domain is not guarded)
    bare_pass = functools.partial(ModelRunner(enc).bare, images[guarded])
    with torch.inference_mode():
        feats, taps = enc.encode_image(images, prompts, taps=True)
        plain = torch.zeros(batch, feats.shape[1], device=device)
        plain[guarded] = bare_pass()
        scores = score_batch(feats, rows, banks, scale, taps, plain)
        decided = decide_batch(scores, rows, banks)
        fns = {
            "encode": lambda: enc.encode_image(images, prompts, taps=True),
            "bare": bare_pass,
            "score": lambda: score_batch(feats, rows, banks, scale, taps, plain),
            "score_no_scope": lambda: score_batch(feats, rows, no_scope, scale, bare=plain),
            "decide": lambda: decide_batch(scores, rows, banks),
            "answers": lambda: decided.answers(banks),
        }
        times = interleaved(fns, device, reps, target_s=0.2)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "us_per_image": {k: round(1e6 * v / batch, 1) for k, v in med.items()},
            "share_of_encode": {k: round(v / med["encode"], 3) for k, v in med.items() if k != "encode"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64], help="micro-batch sizes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions per variant")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ns = p.parse_args(argv)
    torch.set_num_threads(ns.threads)
    results = [measure(ns.device, b, ns.reps) for b in ns.batch]
    print(f"{'batch':>5} " + " ".join(f"{k:>15}" for k in results[0]["us_per_image"]) + "   (us per image)")
    for r in results:
        print(f"{r['batch']:>5} " + " ".join(f"{v:>15.1f}" for v in r["us_per_image"].values()))
    print("share of the encoder: " + "; ".join(
        f"bs{r['batch']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["share_of_encode"].items()) for r in results))
    print(json.dumps({"bench": "decisions", "device": ns.device, "threads": ns.threads, "machine": machine(),
                      "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
