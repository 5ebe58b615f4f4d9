"""The collection on disk: every source's candidates, normalised, deduplicated and written as OUT/<kind>/...
(photos with their crops), each origin in one half by a stable hash; OUT/manifest.json and the count table."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .candidates import KINDS, Candidate, h
from .debian import apt_candidates
from .normalise import crops, normalise
from .rendered import rendered_candidates
from .wheels import wheel_candidates

CROPS_PER_PHOTO = 2
TOOLS = (("pdftoppm", "poppler-utils"), ("rsvg-convert", "librsvg2-bin"), ("chromium", "chromium"))


def half_of(source: str, origin_id: str) -> str:
    """By the package (not its pinned version, so a bump keeps the halves) and the origin."""
    return "selection" if int(h(source.split("==")[0], origin_id)[:8], 16) % 2 == 0 else "heldout"


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[:80]


def gather(cache: Path, work: Path, n_shots: int, n_printed: int) -> tuple[list[Candidate], list[str]]:
    """Every source's candidates, and notes on what is missing (with the command that would add it)."""
    print("wheels ...", file=sys.stderr)
    cands = wheel_candidates(cache)
    apt, missing = apt_candidates()
    cands += apt
    rendered, notes = rendered_candidates(work, n_shots, n_printed)
    cands += rendered
    if missing:
        notes.append("apt-get install --no-install-recommends " + " ".join(missing))
    for tool, pkg in TOOLS:
        if shutil.which(tool) is None:
            notes.append(f"apt-get install {pkg}   # for {tool}")
    return cands, notes


def write_images(c: Candidate, norm: tuple, out: Path, n_crops: int) -> list[dict]:
    """The normalised image (and a photo's crops) under OUT/<kind>/; their manifest entries."""
    raw, ext, size, how = norm
    half = half_of(c.source, c.origin_id)
    tail = "_".join(c.name.split("/")[-2:]) if c.source.startswith("pypi:") else c.name
    base = f"{slug(c.source.split(':', 1)[1].split('==')[0])}__{slug(tail)[:60]}_{h(c.source, c.name)[:6]}"
    items = [(raw, ext, size, how, None)]
    if c.kind == "photo":
        items += [(b, ext, s, "crop", box) for b, s, box in crops(c, raw, n_crops)]
    entries = []
    for i, (b, e, s, how_i, box) in enumerate(items):
        rel = f"{c.kind}/{base}{'' if i == 0 else f'__crop{i}'}{e}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b)
        entry = {"path": rel, "kind": c.kind, "source": c.source, "origin_id": c.origin_id, "half": half,
                 "file": c.name, "width": s[0], "height": s[1], "bytes": len(b), "how": how_i,
                 "sha256": hashlib.sha256(b).hexdigest()}
        if box:
            entry["crop_box"] = list(box)
        entries.append(entry)
    return entries


def write_collection(cands: list[Candidate], out: Path, n_crops: int) -> tuple[list[dict], Counter]:
    """Each candidate in a stable order, skipping unreadable, too small and duplicate images: (manifest, skipped)."""
    seen: set[str] = set()
    manifest: list[dict] = []
    skipped = Counter()
    cands.sort(key=lambda c: (c.source, c.origin_id, c.name))
    for c in tqdm(cands, desc="images", unit="img"):
        try:
            norm = normalise(c, c.load())
        except Exception as e:  # a broken file in a package: skip it, say so
            print(f"  skip {c.source} {c.name}: {type(e).__name__}: {e}", file=sys.stderr)
            norm = None
        if norm is None:
            skipped["unreadable or < 32 px"] += 1
            continue
        digest = hashlib.sha256(norm[0]).hexdigest()
        if digest in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(digest)
        manifest += write_images(c, norm, out, n_crops)
    return manifest, skipped


def write_manifest(manifest: list[dict], out: Path) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def print_summary(manifest: list[dict], skipped: Counter, notes: list[str], out: Path) -> None:
    """Images (and origins) per kind and half, the sources, what was skipped and what is missing."""
    table = Counter((m["kind"], m["half"]) for m in manifest)
    origins = Counter((m["kind"], m["half"]) for m in {(m["kind"], m["half"], m["source"], m["origin_id"]): m
                                                        for m in manifest}.values())
    print(f"\n{'kind':<11} {'selection':>14} {'heldout':>14} {'all':>6}   (images (origins))")
    for k in KINDS:
        s, hd = table[(k, "selection")], table[(k, "heldout")]
        print(f"{k:<11} {s:>6} ({origins[(k, 'selection')]:>4}) {hd:>6} ({origins[(k, 'heldout')]:>4}) {s + hd:>6}")
    s, hd = sum(v for (_, x), v in table.items() if x == "selection"), sum(v for (_, x), v in table.items()
                                                                          if x == "heldout")
    print(f"{'all':<11} {s:>6} {'':>6} {hd:>6} {'':>6} {s + hd:>6}")
    print(f"sources: {len({m['source'] for m in manifest})}; skipped: {dict(skipped)}")
    for n in notes:
        print(f"missing: {n}")
    print(f"manifest: {out / 'manifest.json'}")
