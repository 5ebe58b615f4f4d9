"""Controls and baselines of the evaluation (DESIGN §7), beside the prompt variants.

* `random_partition`: the `random_groups` control, the grouping's group sizes with random
  members, so the value of *gradient* grouping is isolated from the value of any grouping.
* `prototype_predict`: nearest class mean of the shots' frozen image features (cosine), no
  text and no training: what the frozen encoder gives with the same shots.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from .partition import canonical, same_partition
from .runtime import RunContext
from .train import class_means, load_shots


def random_partition(tasks: list[str], groups: list[list[str]], seed: int, draw: int = 0) -> list[list[str]]:
    """The sizes of `groups`, filled with shuffled tasks; a draw equal to `groups` is redrawn (when possible)."""
    sizes = sorted((len(g) for g in groups), reverse=True)
    rng = random.Random(f"random_groups:{seed}:{draw}")
    for _ in range(100):
        order = list(range(len(tasks)))
        rng.shuffle(order)
        clusters, start = [], 0
        for n in sizes:
            clusters.append(order[start:start + n])
            start += n
        out = canonical(tasks, clusters)
        if not same_partition(out, groups):
            return out
    return out  # only one partition has these sizes (all singletons, or one group)


@torch.no_grad()
def _features(rc: RunContext, images: Tensor, chunk: int = 256) -> Tensor:
    device = rc.encoder.logit_scale.device
    return torch.cat([rc.encoder.encode_image(images[i:i + chunk].to(device)).float().cpu()
                      for i in range(0, len(images), chunk)])  # (N, E), L2-normalised


@torch.no_grad()
def prototype_predict(rc: RunContext, seed: int, keep: bool = True) -> dict[str, tuple[Tensor, Tensor]]:
    """Per task: (probabilities (N, C), labels (N,)) on the test split by nearest class mean of seed's shots."""
    rc.encoder.eval()
    shots = load_shots(rc.cache, rc.data, rc.split, seed)
    feats = _features(rc, shots.images)
    scale = float(rc.encoder.logit_scale.exp())
    out = {}
    for ti, dom in enumerate(rc.data.domains):
        mine = shots.tasks == ti
        protos = class_means(feats[mine], shots.labels[mine], len(dom.labels))  # (C, E)
        x = rc.cache.load([p for p, _ in dom.test], cache=keep)
        probs = (scale * _features(rc, x) @ protos.T).softmax(-1)
        out[dom.name] = (probs, torch.tensor([li for _, li in dom.test]))
    return out


def prototype_params(rc: RunContext) -> int:
    """Numbers fitted by the prototype baseline: one class mean (embed dim) per label per task."""
    return sum(len(d.labels) for d in rc.data.domains) * int(rc.clip.info.embed_dim)
