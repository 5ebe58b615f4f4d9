"""A source image before it is read, the service's limits, and the stable hashes that pick and split."""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KINDS = ("photo", "texture", "screenshot", "document", "diagram", "artwork", "icon")
MAX_BYTES = 10 * 1024 * 1024  # the service's defaults (service.settings)
MAX_PIXELS = 40_000_000
MIN_SIDE = 32
IMAGE_EXT = re.compile(r"\.(jpe?g|png|webp|gif|bmp|svg|tiff?|xpm|pat)$", re.I)


@dataclass
class Candidate:
    """One source image before it is read: bytes come from `load` (lazy: wallpapers are large)."""
    kind: str
    source: str
    origin_id: str
    name: str  # unique within (source): becomes the file name
    load: Callable[[], bytes]
    svg_width: int = 1024
    path: str | None = None  # the file, for files on disk

    def file_size(self) -> int:
        return os.path.getsize(self.path) if self.path else 0


def h(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def cap(cands: list[Candidate], n: int) -> list[Candidate]:
    """At most n origins of a list (all of their images), chosen by a stable hash."""
    origins = sorted({c.origin_id for c in cands}, key=lambda o: h(cands[0].source, o) if cands else o)[:n]
    keep = set(origins)
    return [c for c in cands if c.origin_id in keep]


def one_per_origin(cands: list[Candidate], prefer: Callable[[Candidate], tuple]) -> list[Candidate]:
    """Resolution variants of one picture: keep the one `prefer` ranks highest."""
    by: dict[str, list[Candidate]] = defaultdict(list)
    for c in cands:
        by[c.origin_id].append(c)
    return [max(v, key=prefer) for _, v in sorted(by.items())]


def stem(path: str) -> str:
    return re.sub(r"\.[^./]+$", "", path.rsplit("/", 1)[-1])


def on_disk(kind: str, source: str, origin_id: str, name: str, path: str, svg_width: int = 1024) -> Candidate:
    return Candidate(kind, source, origin_id, name, lambda: Path(path).read_bytes(), svg_width, path)
