"""Domain router: which domain's bundle an image belongs to, from bare-CLIP image features.

A multinomial logistic regression on the frozen CLIP's normalised image embedding (no prompts):
``probabilities = softmax((f - center) @ weight.T + bias)`` over the router's domains. It is
stored next to the bundles as its own versioned safetensors file (DESIGN §5 layout):

    <store>/_router/<version>.safetensors   tensors center (E,), weight (D, E), bias (D,)
    <store>/_router/CURRENT                 the active version

``_`` starts no valid domain name, so the store never lists ``_router`` as a domain. The
header's ``router`` key holds the JSON manifest: domains, base model (checked on load like a
bundle's), the low-confidence cut, held-out metrics, created_at and the tensors' sha256.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .bundle import BundleError, check_stem, check_tensors, tensor_sha256
from .loading import BaseModelInfo
from .prompts import check_task_name

ROUTER_DIR = "_router"  # store sub-directory; not a valid task name, so never a domain
ROUTER_SCHEMA = 1
ROUTER_TENSORS = ("center", "weight", "bias")


@dataclass
class RouterManifest:
    version: str
    domains: list[str]  # one per weight row
    base_model: dict[str, Any]  # BaseModelInfo.to_dict() of the CLIP whose features it reads
    min_confidence: float = 0.5  # below this top probability a routed image also goes to review
    groups: list[list[str]] = field(default_factory=list)  # domain groups, for reporting
    method: str = "logistic"  # multinomial logistic regression on standardised bare-CLIP features
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out accuracy, group accuracy, confusion
    created_at: str = ""
    sha256: str = ""
    schema_version: int = ROUTER_SCHEMA

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | str) -> RouterManifest:
        known = {f.name for f in fields(cls)}
        try:
            m = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise BundleError("manifest", path, f"malformed router manifest: {e}") from None
        if m.schema_version > ROUTER_SCHEMA:
            raise BundleError("manifest", path, f"router schema_version {m.schema_version} is newer than "
                                                f"supported {ROUTER_SCHEMA}")
        try:
            [check_task_name(x) for x in m.domains]
        except ValueError as e:
            raise BundleError("manifest", path, str(e)) from None
        if len(set(m.domains)) != len(m.domains) or len(m.domains) < 2:
            raise BundleError("manifest", path, f"a router needs >= 2 distinct domains, got {m.domains}")
        return m


@dataclass(frozen=True)
class Route:
    """Where one image was routed."""

    domain: str
    confidence: float  # router probability of `domain` among the served domains
    candidates: tuple[tuple[str, float], ...]  # the top domains, most probable first
    low_confidence: bool  # confidence < the router's min_confidence


@dataclass
class DomainRouter:
    manifest: RouterManifest
    tensors: dict[str, Tensor]  # center (E,), weight (D, E), bias (D,), float32

    @property
    def version(self) -> str:
        return self.manifest.version

    def to(self, device: torch.device | str) -> DomainRouter:
        return DomainRouter(self.manifest, {k: v.to(device, torch.float32) for k, v in self.tensors.items()})

    def logits(self, feats: Tensor) -> Tensor:
        """(N, D) from (N, E) normalised bare-CLIP image features."""
        t = self.tensors
        return (feats.float() - t["center"]) @ t["weight"].T + t["bias"]

    def route(self, feats: Tensor, served: Sequence[str], top: int = 3) -> list[Route]:
        """Route each image to the most probable of the router's domains that are `served`.

        Raises ValueError when none of its domains is served.
        """
        keep = [i for i, d in enumerate(self.manifest.domains) if d in set(served)]
        if not keep:
            raise ValueError(f"the router knows {self.manifest.domains}, none of which is served")
        names = [self.manifest.domains[i] for i in keep]
        probs = self.logits(feats)[:, keep].softmax(1).cpu()  # (N, D_served)
        vals, idx = probs.topk(min(top, len(keep)), dim=1)
        cut = self.manifest.min_confidence
        return [Route(names[int(i[0])], float(v[0]), tuple((names[int(k)], float(p)) for k, p in zip(i, v, strict=True)),
                      float(v[0]) < cut) for v, i in zip(vals, idx, strict=True)]


def fit_router(feats: Tensor, labels: Tensor, domains: list[str], *, l2: float = 1e-3,
               steps: int = 300) -> dict[str, Tensor]:
    """Multinomial logistic regression on standardised features; returns the stored tensors (fp32).

    Args:
        feats: (N, E) normalised bare-CLIP image features.
        labels: (N,) domain index of each row.
        domains: names of the D classes.
        l2: ridge penalty on the standardised weights (mean over rows of the loss + l2 * |W|^2).
    """
    x = feats.double()
    center = x.mean(0)
    scale = x.std(0).clamp(min=1e-6)
    z = (x - center) / scale  # (N, E)
    w = torch.zeros(len(domains), x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(domains), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w.T + b, labels) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    weight = (w.detach() / scale).float()  # folds the standardisation into the weights
    return {"center": center.float(), "weight": weight, "bias": b.detach().float()}


def make_router(tensors: dict[str, Tensor], domains: list[str], base: BaseModelInfo, *, version: str,
                min_confidence: float = 0.5, groups: list[list[str]] | None = None,
                metrics: dict[str, Any] | None = None, dtype: torch.dtype = torch.float16) -> DomainRouter:
    """A router whose tensors are stored in `dtype` (fp16: the served numbers are the stored ones)."""
    stored = {k: tensors[k].to(dtype).contiguous() for k in ROUTER_TENSORS}
    m = RouterManifest(version=version, domains=list(domains), base_model=base.to_dict(),
                       min_confidence=float(min_confidence), groups=[list(g) for g in groups or []],
                       metrics=dict(metrics or {}))
    return DomainRouter(m, stored)


def save_router(router: DomainRouter, path: Path | str) -> Path:
    m = router.manifest
    m.sha256 = tensor_sha256(router.tensors)
    m.created_at = m.created_at or datetime.now(UTC).isoformat(timespec="seconds")
    save_file(dict(router.tensors), str(path), metadata={"router": json.dumps(asdict(m), sort_keys=True)})
    return Path(path)


def load_router(path: Path | str, base: BaseModelInfo | None = None) -> DomainRouter:
    """Load and validate a router file; refuses it (BundleError with `kind`) like a bundle."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            raw = json.loads((f.metadata() or {})["router"])
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise BundleError("corrupt", path, f"not a router safetensors file ({type(e).__name__}: {e})") from None
    m = RouterManifest.from_dict(raw, path)
    check_stem(path, m.version)
    if base is not None:
        bad = base.mismatches(m.base_model)
        if bad:
            raise BundleError("base_model", path, "trained for another CLIP: " + "; ".join(bad))
    check_tensors(tensors, m.sha256, path)
    _check_router_shapes(tensors, m, path)
    return DomainRouter(m, {k: v.float() for k, v in tensors.items()})


def _check_router_shapes(tensors: dict[str, Tensor], m: RouterManifest, path: Path) -> None:
    d, e = len(m.domains), m.base_model.get("embed_dim")
    want = {"center": (e,), "weight": (d, e), "bias": (d,)}
    if set(tensors) != set(want):
        raise BundleError("shape", path, f"tensors {sorted(tensors)}, expected {sorted(want)}")
    bad = [f"{k} is {tuple(tensors[k].shape)}, expected {v}" for k, v in want.items() if tuple(tensors[k].shape) != v]
    if bad:
        raise BundleError("shape", path, "; ".join(bad))


def confusion(pred: Sequence[int], true: Sequence[int], n: int) -> list[list[int]]:
    """n x n counts: rows are the true class, columns the predicted one."""
    out = [[0] * n for _ in range(n)]
    for p, t in zip(pred, true, strict=True):
        out[t][p] += 1
    return out


def route_metrics(pred: Sequence[str], true: Sequence[str], domains: list[str],
                  groups: list[list[str]] | None = None) -> dict[str, Any]:
    """Exact-domain accuracy, group accuracy (when groups are given) and the confusion matrix."""
    group_of = {d: i for i, g in enumerate(groups or []) for d in g}
    n = len(true)
    out: dict[str, Any] = {"n": n, "accuracy": sum(p == t for p, t in zip(pred, true, strict=True)) / max(n, 1)}
    if group_of:
        out["group_accuracy"] = sum(group_of.get(p, -1) == group_of.get(t, -2)
                                    for p, t in zip(pred, true, strict=True)) / max(n, 1)
    idx = {d: i for i, d in enumerate(domains)}
    out["confusion"] = {"domains": domains, "rows_true_cols_predicted": confusion(
        [idx[p] for p in pred], [idx[t] for t in true], len(domains))}
    return out


def format_confusion(metrics: dict[str, Any]) -> str:
    """The confusion matrix as a markdown table (rows: true domain, columns: routed to)."""
    c = metrics["confusion"]
    names, rows = c["domains"], c["rows_true_cols_predicted"]
    lines = ["| true \\ routed | " + " | ".join(names) + " | recall |", "|---" * (len(names) + 2) + "|"]
    for name, row in zip(names, rows, strict=True):
        total = sum(row)
        recall = row[names.index(name)] / total if total else math.nan
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + f" | {recall:.3f} |")
    return "\n".join(lines)
