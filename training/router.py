"""Fit the domain router on bare-CLIP image features and publish it into a store (promptclip.router).

`python -m training router --data DATA --store STORE` (and `fit`, after its export): features of
the training-pool and validation images of every domain, a multinomial logistic regression, the
held-out (test split) exact-domain and group accuracy and confusion matrix in the manifest, then
an fp16 file published as `STORE/_router/<version>.safetensors` + CURRENT.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from promptclip import PromptStore
from promptclip.router import DomainRouter, fit_router, format_confusion, make_router, route_metrics

from .data import ImageCache, TaskData
from .router_config import RouterConfig

log = logging.getLogger(__name__)


@torch.inference_mode()
def bare_features(clip, cache: ImageCache, paths: list[Path], chunk: int = 256) -> Tensor:
    """(N, E) normalised image features of the frozen CLIP without prompts, float32 on CPU."""
    device = next(clip.model.parameters()).device
    dtype = next(clip.model.parameters()).dtype
    out = []
    for i in range(0, len(paths), chunk):
        images = cache.load(paths[i:i + chunk], cache=False).to(device, dtype)  # (n, 3, H, W)
        out.append(clip.model.encode_image(images, normalize=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, clip.info.embed_dim)


def split_features(clip, cache: ImageCache, data: TaskData, splits: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """Features and domain indices of the given splits of every domain."""
    paths, labels = [], []
    for ti, dom in enumerate(data.domains):
        items = [p for s in splits for p, _ in getattr(dom, s)]
        paths += items
        labels += [ti] * len(items)
    return bare_features(clip, cache, paths), torch.tensor(labels, dtype=torch.long)


def read_groups(data_dir: Path, run: Path | None = None) -> list[list[str]]:
    """Domain groups for reporting: RUN/groups.json when given, else DATA/planted_groups.json, else none."""
    for path in ([run / "groups.json"] if run else []) + [Path(data_dir) / "planted_groups.json"]:
        if path.is_file():
            return json.loads(path.read_text())["groups"]
    return []


def train_router(clip, cache: ImageCache, data: TaskData, *, version: str, min_confidence: float = 0.5,
                 l2: float = 1e-5, groups: list[list[str]] | None = None) -> DomainRouter:
    """Fit on train_pool + val, measure on test, with the fp16 tensors that will be served."""
    domains = data.tasks
    feats, labels = split_features(clip, cache, data, ("train_pool", "val"))
    router = make_router(fit_router(feats, labels, domains, l2=l2), domains, clip.info, version=version,
                         min_confidence=min_confidence, groups=groups)
    test_x, test_y = split_features(clip, cache, data, ("test",))
    routes = router.to("cpu").route(test_x, domains)
    groups_in = [[d for d in g if d in domains] for g in groups or []]
    metrics = route_metrics([r.domain for r in routes], [domains[i] for i in test_y.tolist()], domains, groups_in)
    metrics.update({"split": "test", "n_fit": len(labels), "l2": l2,
                    "low_confidence_rate": sum(r.low_confidence for r in routes) / max(len(routes), 1)})
    router.manifest.metrics = metrics
    log.info("router %s: test accuracy %.3f, group accuracy %s over %d images\n%s", version, metrics["accuracy"],
             metrics.get("group_accuracy"), metrics["n"], format_confusion(metrics))
    return router


def publish_router(clip, cache: ImageCache, data: TaskData, store: Path, cfg: RouterConfig, *,
                   groups: list[list[str]] | None = None, created: str = "") -> dict:
    """Train a router and publish it into `store`; returns version, path and metrics."""
    st = PromptStore(store)
    version = cfg.router_version or st.next_version("_router")
    router = train_router(clip, cache, data, version=version, min_confidence=cfg.min_confidence, l2=cfg.router_l2,
                          groups=groups)
    router.manifest.created_at = created
    path = st.publish_router(router, base=clip.info)
    return {"version": version, "path": str(path), "metrics": router.manifest.metrics}
