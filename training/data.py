"""ImageFolder data per domain (``DATA/<domain>/<label>/<image>``) with deterministic splits.

An optional ``DATA/<domain>/labels.json`` gives each label's prompt text, ``unsafe`` flag and
display name: ``{"labels": [{"name": "knife", "prompt": "a photo of a knife.", "unsafe": true}]}``.
Without it, labels are the folder names and prompts use ``a photo of a {name}.``

Splits: every (domain, label) folder is sorted and shuffled with a fixed split seed, then
cut into test (a fraction), validation (a count, or a fraction) and a training pool. A training
seed picks `shots` images per label from the pool, so test and validation never depend on the
seed. Decision calibration uses validation plus the pool images the exported seed left unused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from promptclip import Label, check_task_name
from promptclip.images import ACCEPTED, ACCEPTED_SUFFIXES, load_rgb

log = logging.getLogger(__name__)

IMAGE_EXTS = set(ACCEPTED_SUFFIXES)  # the formats the service accepts: calibrate on pixels it would see
DEFAULT_PROMPT = "a photo of a {}."


@dataclass
class DomainData:
    """One task: its labels and the file lists of each split, as (path, label index)."""

    name: str
    labels: list[Label]
    train_pool: list[tuple[Path, int]] = field(default_factory=list)
    val: list[tuple[Path, int]] = field(default_factory=list)
    test: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def prompts(self) -> list[str]:
        return [lab.prompt for lab in self.labels]

    def calibration(self, k: int, seed: int) -> list[tuple[Path, int]]:
        """Decision calibration images: validation plus the pool images training seed `seed` left unused."""
        used = set(self.shots(k, seed))
        return self.val + [it for it in self.train_pool if it not in used]

    def shots(self, k: int, seed: int) -> list[tuple[Path, int]]:
        """`k` training images per label, chosen by `seed` (all of the pool if it has fewer)."""
        out = []
        for li in range(len(self.labels)):
            items = [it for it in self.train_pool if it[1] == li]
            random.Random(f"shots:{seed}:{self.name}:{li}").shuffle(items)
            out += items[:k]
        return out


@dataclass
class TaskData:
    domains: list[DomainData]

    @property
    def tasks(self) -> list[str]:
        return [d.name for d in self.domains]

    def __getitem__(self, name: str) -> DomainData:
        return self.domains[self.tasks.index(name)]

    @property
    def label_texts(self) -> dict[str, list[str]]:
        return {d.name: d.prompts for d in self.domains}


def _read_labels(folder: Path, names: list[str]) -> list[Label]:
    meta = {}
    lj = folder / "labels.json"
    if lj.is_file():
        meta = {lab["name"]: lab for lab in json.loads(lj.read_text()).get("labels", [])}
        unknown = sorted(set(meta) - set(names))
        if unknown:
            log.warning("%s names labels without a folder: %s", lj, unknown)
    return [Label(name=n, prompt=meta.get(n, {}).get("prompt", DEFAULT_PROMPT.format(n.replace("_", " "))),
                  unsafe=bool(meta.get(n, {}).get("unsafe", False)),
                  openai_category=meta.get(n, {}).get("openai_category")) for n in names]


def load_tasks(data: Path | str, split_seed: int = 1234, test_frac: float = 0.5, val_per_class: int = 4,
               domains: list[str] | None = None, val_frac: float = 0.0) -> TaskData:
    """Scan an ImageFolder-per-domain tree and split it deterministically."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist (make one with `python -m training synth`)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = domains or found
    missing = sorted(set(names) - set(found))
    if missing:
        raise ValueError(f"domains {missing} not found under {root}; found {found}")
    out = []
    for dname in names:
        folder = root / dname
        label_names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if len(label_names) < 2:
            raise ValueError(f"{folder} needs >= 2 label folders, found {label_names}")
        dom = DomainData(check_task_name(dname.lower()), _read_labels(folder, label_names))
        for li, lname in enumerate(label_names):
            entries = [p for p in (folder / lname).iterdir() if p.is_file() and not p.name.startswith(".")]
            files = sorted(p for p in entries if p.suffix.lower() in IMAGE_EXTS)
            if len(files) < len(entries):
                log.warning("%s/%s: %d files left out, not %s (the formats the service accepts)", dname, lname,
                            len(entries) - len(files), ACCEPTED)
            random.Random(f"split:{split_seed}:{dname}:{lname}").shuffle(files)
            n_test = max(1, round(test_frac * len(files)))
            n_val = round(val_frac * len(files)) if val_frac > 0 else val_per_class
            dom.test += [(f, li) for f in files[:n_test]]
            dom.val += [(f, li) for f in files[n_test:n_test + n_val]]
            dom.train_pool += [(f, li) for f in files[n_test + n_val:]]
            if len(files) <= n_test + n_val:
                log.warning("%s/%s has %d images: no training pool left after test+val", dname, lname, len(files))
        if not dom.train_pool:
            raise ValueError(f"domain {dname!r} has no image left for training after the test split "
                             f"(test_frac={test_frac}) and {val_per_class} validation images per label: give "
                             "each label more images, or lower --test-frac / --val-per-class")
        out.append(dom)
    return TaskData(out)


class ImageCache:
    """Preprocessed images, loaded once (few-shot sets are small; eval sets are streamed in chunks)."""

    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess
        self._cache: dict[Path, Tensor] = {}

    def load(self, paths: list[Path], cache: bool = True) -> Tensor:
        out = []
        for p in paths:
            t = self._cache.get(p)
            if t is None:
                t = self.preprocess(load_rgb(p))  # the service's decode: EXIF, alpha on white, 16-bit
                if cache:
                    self._cache[p] = t
            out.append(t)
        return torch.stack(out)  # (N, 3, H, W)


def items_tensors(cache: ImageCache, data: TaskData, split: str, seed: int = 0, shots: int = 0,
                  keep: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(images, labels, task index) for a split of every task; split 'shots' takes `shots` per label."""
    imgs, labels, tasks = [], [], []
    for ti, dom in enumerate(data.domains):
        items = dom.shots(shots, seed) if split == "shots" else getattr(dom, split)
        if not items:
            continue
        imgs.append(cache.load([p for p, _ in items], cache=keep))
        labels.append(torch.tensor([li for _, li in items]))
        tasks.append(torch.full((len(items),), ti))
    return torch.cat(imgs), torch.cat(labels), torch.cat(tasks)


def fingerprint(data: TaskData) -> str:
    """Short digest of the file lists, so a cached run is never reused on other data."""
    h = hashlib.sha256()
    for d in data.domains:
        for split in (d.train_pool, d.val, d.test):
            for p, li in split:
                h.update(f"{d.name}/{p.parent.name}/{p.name}:{li};".encode())
    return h.hexdigest()[:16]
