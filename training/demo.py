"""Rebuild the embedded tiny CLIP and the demo bundles, bit-for-bit, from fixed seeds.

synth (seed 0) -> pretrain-tiny (seed 0) -> fit -> the store's domain folders are replaced
by freshly published v0001 bundles. One torch thread and a fixed manifest timestamp make
every byte a function of the seeds.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from promptclip.loading import EMBEDDED_WEIGHTS


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_demo(work: Path, store: Path, main: Callable[[list[str]], int], skip_pretrain: bool = False,
               created: str = "2026-01-01T00:00:00+00:00") -> dict:
    """`main` is the CLI's entry point (passed in, so this module does not import the CLI that imports it)."""
    work, store = Path(work), Path(store)
    data, run, scratch = work / "data", work / "run", work / "store"
    for p in (data, run, scratch):
        shutil.rmtree(p, ignore_errors=True)
    main(["synth", "--out", str(data), "--seed", "0"])
    if not skip_pretrain:
        main(["pretrain-tiny", "--seed", "0"])
    main(["fit", "--data", str(data), "--out", str(run), "--store", str(scratch), "--created-at", created])
    out = {"embedded": {"path": str(EMBEDDED_WEIGHTS), "sha256": sha256(EMBEDDED_WEIGHTS)}, "bundles": {}}
    for dom in sorted(p.name for p in scratch.iterdir() if p.is_dir()):
        shutil.rmtree(store / dom, ignore_errors=True)
        (store / dom).mkdir(parents=True)
        for f in (scratch / dom).iterdir():
            shutil.copy2(f, store / dom / f.name)
        out["bundles"][dom] = {f.name: sha256(f) for f in sorted((store / dom).iterdir())}
    return out
