"""Image collections for the backlog tests: synthetic-world images plus the odd formats the service accepts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from backlog import ScoreConfig
from tests.service.serving import image_bytes
from training.synth import LABELS, image_rng, render

ODD_KINDS = ("jpeg", "cmyk", "exif", "palette", "rgba", "gif", "png16", "webp")


def write_synth(folder: Path, n: int, domain: str = "photo", seed: int = 11) -> list[Path]:
    """`n` synthetic images of `domain` (labels in turn) as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(LABELS)
    paths = []
    for i in range(n):
        label = labels[i % len(labels)]
        p = folder / f"{label}-{i:05d}.png"
        render(domain, label, image_rng(seed, domain, label, i)).save(p)
        paths.append(p)
    return paths


def write_odd(folder: Path, bad: bool = True) -> list[Path]:
    """One file per odd format (CMYK, EXIF-rotated, palette, ...), plus a truncated and a garbage file."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = {"jpeg": "jpg", "cmyk": "jpg", "exif": "jpg", "palette": "png", "rgba": "png", "png16": "png"}
    files = {f"odd-{k}.{suffix.get(k, k)}": image_bytes(k, seed=i) for i, k in enumerate(ODD_KINDS)}
    if bad:
        files["bad-truncated.jpg"] = image_bytes("truncated")
        files["bad-garbage.png"] = b"this is not an image"
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / n for n in files]


def write_parquet(path: Path, files: list[Path], root: Path, as_paths: bool = False) -> None:
    """A Parquet file with an id column (the path relative to `root`) and image bytes (or paths)."""
    ids = [f.relative_to(root).as_posix() for f in files]
    col = pa.array([str(f) for f in files]) if as_paths else pa.array([f.read_bytes() for f in files], pa.binary())
    pq.write_table(pa.table({"id": ids, "path" if as_paths else "image": col}), path, row_group_size=7)


def config(input: Path, out: Path, store: Path, **kw) -> ScoreConfig:
    """Small batches and shards so that a handful of images crosses several of each."""
    kw = {"domain": "photo", "batch_size": 4, "shard_size": 5, "progress": False, **kw}
    return ScoreConfig(input=input, out=out, store=store, **kw)
