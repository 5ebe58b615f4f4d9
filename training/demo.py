"""Rebuild the embedded tiny CLIP and the demo bundles, bit-for-bit, from fixed seeds.

synth (seed 0, 80 images per label: half of them the test split the manifests' claims and their
intervals come from, the rest validation, training shots and calibration) -> pretrain-tiny (seed 0)
-> fit (comic and poster on low-passed inputs) -> the store's domain folders are replaced by freshly
published v0001 bundles. The domain router is fitted on its own larger world (seed 0, 240 images
per label, a quarter held out) -> `_router/v0001`. One torch thread and a
fixed manifest timestamp make every byte a function of the seeds.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from promptclip.loading import EMBEDDED_WEIGHTS

DEMO_PER_CLASS = 80  # images per (domain, label) of the demo world: 40 test images per label per domain
# The flat-colour group, trained and served on low-passed inputs (TrainConfig.lowpass_domains): comic's decisions
# moved most when an image arrived resized or as a JPEG, and poster shares its group prompts.
LOWPASS_DOMAINS = ("comic", "poster")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_demo(work: Path, store: Path, main: Callable[[list[str]], int], skip_pretrain: bool = False,
               created: str = "2026-01-01T00:00:00+00:00") -> dict:
    """`main` is the CLI's entry point (passed in, so this module does not import the CLI that imports it)."""
    work, store = Path(work), Path(store)
    data, run, scratch, router_data = work / "data", work / "run", work / "store", work / "router-data"
    for p in (data, run, scratch, router_data):
        shutil.rmtree(p, ignore_errors=True)
    main(["synth", "--out", str(data), "--seed", "0", "--per-class", str(DEMO_PER_CLASS)])
    if not skip_pretrain:
        main(["pretrain-tiny", "--seed", "0"])
    main(["fit", "--data", str(data), "--out", str(run), "--store", str(scratch), "--created-at", created,
          "--no-router", "--lowpass-domains", *LOWPASS_DOMAINS])
    main(["synth", "--out", str(router_data), "--seed", "0", "--per-class", "240"])
    main(["router", "--data", str(router_data), "--store", str(scratch), "--test-frac", "0.25", "--created-at",
          created, "--router-version", "v0001"])
    out = {"embedded": {"path": str(EMBEDDED_WEIGHTS), "sha256": sha256(EMBEDDED_WEIGHTS)}, "bundles": {}}
    for dom in sorted(p.name for p in scratch.iterdir() if p.is_dir()):
        shutil.rmtree(store / dom, ignore_errors=True)
        (store / dom).mkdir(parents=True)
        for f in (scratch / dom).iterdir():
            shutil.copy2(f, store / dom / f.name)
        out["bundles"][dom] = {f.name: sha256(f) for f in sorted((store / dom).iterdir())}
    return out
