"""Is an image in a domain's scope? Gaussian feature scores from a bundle's fitted scope model (DESIGN §11).

An image a domain's labels were never made for (a photograph sent to `sketch`, a screenshot, noise)
must not be read as one of its labels. The final, normalised embedding alone cannot tell: a small
CLIP maps an unfamiliar photograph close to some label's mean. The image tower's intermediate
layers can: their mean token carries the image statistics the domain's images share.

A scope model is a few *signals*, each a Gaussian over one feature of the image fitted on the
domain's own in-domain images (never on OOD images):

* source ``layer<k>``: the mean of the original tokens after block k (multi-layer Mahalanobis);
* source ``final``: the normalised embedding.

Each Gaussian keeps its top-r principal directions of the (shrunk, within-class) covariance and the
mean variance left outside them, so a signal's squared distance is the Mahalanobis distance in the
principal subspace plus ViM's residual outside it (exact Mahalanobis when r = D). A signal's score
``-d^2 / D`` is standardised by the median and MAD of its cross-fitted calibration scores, and the
domain's scope score is the mean (or min) over signals: higher is more in scope. The cut on it is
split conformal on the same calibration images (`DecisionRule.scope_cut`).

Serving does tensor work only: every parameter arrives fitted in the bundle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

COMBINES = ("mean", "min")
FINAL = "final"


def source_index(source: str) -> int:
    """`final` -> -1; `layer<k>` -> k (k >= 1: after block k)."""
    if source == FINAL:
        return -1
    if source.startswith("layer") and source[5:].isdigit() and int(source[5:]) >= 1:
        return int(source[5:])
    raise ValueError(f"unknown scope source {source!r}; known: 'final', 'layer1', 'layer2', ...")


@dataclass(frozen=True)
class GaussianSignal:
    """One feature's Gaussian: d^2 = |V^T (x - mu)|^2_{inv_sd} + |x - mu - V V^T (x - mu)|^2 * resid_inv_var."""

    source: str  # 'final' or 'layer<k>'
    means: Tensor  # (1, D) the mean
    basis: Tensor  # (D, r) principal directions
    inv_sd: Tensor  # (r + 1,): 1 / sqrt(eigenvalue) per direction, then 1 / sqrt(mean residual variance)
    center: float = 0.0  # median of the cross-fitted calibration scores
    spread: float = 1.0  # their median absolute deviation

    def raw_score(self, x: Tensor) -> Tensor:
        """(N,) -d^2 / D of features x (N, D) (higher: more in scope)."""
        x = x.float()
        diff = x - self.means.to(x)  # (N, D)
        return neg_d2(diff, diff @ self.basis.to(x), self.inv_sd.to(x))

    def score(self, x: Tensor) -> Tensor:
        """(N,) the raw score standardised by the calibration median and MAD."""
        return (self.raw_score(x) - self.center) / self.spread

    def to(self, device) -> GaussianSignal:
        return GaussianSignal(self.source, self.means.to(device), self.basis.to(device), self.inv_sd.to(device),
                              self.center, self.spread)


def combine_z(z: Tensor, how: str, present: Tensor | None = None) -> Tensor:
    """(N,) one scope score from standardised signal scores z (N, S): their mean or min over the signals
    `present` (N, S) marks (default: all)."""
    if present is None:
        return z.mean(1) if how == "mean" else z.min(1).values
    if how == "mean":
        return z.masked_fill(~present, 0).sum(1) / present.sum(1).clamp_min(1)
    return z.masked_fill(~present, math.inf).min(1).values


def neg_d2(diff: Tensor, proj: Tensor, inv_sd: Tensor, dims: Tensor | None = None) -> Tensor:
    """(..., N) -d^2 / D from centred features (..., N, D), their projections (..., N, r) and inv_sd
    ((r + 1,) or (..., N, r + 1)); `dims` the true D where the features are zero-padded (default: D)."""
    resid = (diff.pow(2).sum(-1) - proj.pow(2).sum(-1)).clamp_min(0)  # energy outside the principal subspace
    d2 = (proj * inv_sd[..., :-1]).pow(2).sum(-1) + resid * inv_sd[..., -1] ** 2
    return -d2 / (diff.shape[-1] if dims is None else dims)


def signal_input(source: str, feats: Tensor, taps: Tensor | None) -> Tensor:
    """The (N, D) feature a signal reads: the normalised embedding, or a layer's mean token from `taps`."""
    k = source_index(source)
    if k < 0:
        return feats
    if taps is None or taps.shape[1] < k:
        raise ValueError(f"scope signal {source} needs the image tower's layer taps "
                         f"(PromptedCLIP.encode_image(..., taps=True)); got {None if taps is None else tuple(taps.shape)}")
    return taps[:, k - 1]


@dataclass(frozen=True)
class ScopeModel:
    """A domain's fitted scope signals and how they combine into one score."""

    signals: tuple[GaussianSignal, ...]
    combine: str = "mean"  # mean | min of the standardised signal scores

    def __post_init__(self) -> None:
        if self.combine not in COMBINES:
            raise ValueError(f"unknown scope combine {self.combine!r}; known: {COMBINES}")

    @property
    def needs_taps(self) -> bool:
        return any(source_index(s.source) > 0 for s in self.signals)

    def score(self, feats: Tensor, taps: Tensor | None) -> Tensor:
        """(N,) the domain's scope score of normalised embeddings (N, E) and layer taps (N, L, W): the
        served computation (`ScopeBank`) over this one domain."""
        rows = torch.zeros(len(feats), dtype=torch.long, device=feats.device)
        return ScopeBank.stack([self], feats.device).score(feats, taps, rows)

    def to(self, device) -> ScopeModel:
        return ScopeModel(tuple(s.to(device) for s in self.signals), self.combine)

    # ------------------------------------------------------------------ bundle form
    def tensors(self) -> dict[str, Tensor]:
        """Bundle tensors: scope.<source>.means / .basis (fp16) and .inv_sd (fp32)."""
        out = {}
        for s in self.signals:
            out[f"scope.{s.source}.means"] = s.means.detach().cpu().half().contiguous()
            out[f"scope.{s.source}.basis"] = s.basis.detach().cpu().half().contiguous()
            out[f"scope.{s.source}.inv_sd"] = s.inv_sd.detach().cpu().float().contiguous()
        return out

    def manifest(self) -> dict[str, Any]:
        """The manifest's `decision.scope.model`: sources, standardisation and combine."""
        return {"combine": self.combine, "signals": [
            {"source": s.source, "center": s.center, "spread": s.spread, "rank": int(s.basis.shape[1]),
             "dim": int(s.basis.shape[0])} for s in self.signals]}

    @classmethod
    def from_bundle(cls, meta: Mapping[str, Any] | None, tensors: Mapping[str, Tensor]) -> ScopeModel | None:
        """The model a bundle stores (None without one); ValueError naming what does not fit."""
        if not meta or not meta.get("signals"):
            return None
        signals = []
        for sm in meta["signals"]:
            src = sm["source"]
            source_index(src)
            try:
                means, basis, inv = (tensors[f"scope.{src}.{k}"].float() for k in ("means", "basis", "inv_sd"))
            except KeyError as e:
                raise ValueError(f"scope signal {src}: tensor {e.args[0]} is missing") from None
            if means.dim() != 2 or means.shape[0] != 1 or basis.dim() != 2 or basis.shape[0] != means.shape[1] \
                    or tuple(inv.shape) != (basis.shape[1] + 1,):
                raise ValueError(f"scope signal {src}: means {tuple(means.shape)}, basis {tuple(basis.shape)}, "
                                 f"inv_sd {tuple(inv.shape)} do not fit (1, D), (D, r), (r + 1,)")
            spread = float(sm.get("spread", 1.0))
            if not spread > 0:
                raise ValueError(f"scope signal {src}: spread must be > 0, got {spread}")
            signals.append(GaussianSignal(src, means, basis, inv, float(sm.get("center", 0.0)), spread))
        return cls(tuple(signals), meta.get("combine", "mean"))


def scope_tensor_names(meta: Mapping[str, Any] | None) -> Sequence[str]:
    """The tensor names a bundle's scope model needs."""
    if not meta:
        return ()
    return [f"scope.{s['source']}.{k}" for s in meta.get("signals", []) for k in ("means", "basis", "inv_sd")]


@dataclass(frozen=True)
class ScopeBank:
    """Every served domain's scope model, stacked over sources and domains, so that a mixed batch is
    scored in one fixed set of batched ops, however many signals and domains there are.

    Sources are padded to the widest input Dmax (zeros add nothing to a distance; each source keeps
    its own D for the -d^2 / D scale). Per source s and domain t: the mean (S, T, Dmax), the bases
    side by side (S, Dmax, T * r) so one batched product projects a batch onto every domain's
    subspace, inv_sd (S, T, r + 1). Ranks are padded with zero directions. A domain without source
    s, or without a scope model, has `has[t, s]` False; a domain without one scores +inf.
    """

    sources: tuple[str, ...]
    layers: Tensor  # (S,) long: the layer tap each source reads (0 for `final`, which reads the embedding)
    dims: Tensor  # (S,) each source's own input width D
    means: Tensor  # (S, T, Dmax)
    bases: Tensor  # (S, Dmax, T * r)
    inv_sd: Tensor  # (S, T, r + 1)
    center: Tensor  # (T, S)
    spread: Tensor  # (T, S)
    has: Tensor  # (T, S) bool
    use_min: Tensor  # (T,) bool: combine by min, else mean
    scoped: Tensor  # (T,) bool: the domain has a scope model

    @classmethod
    def stack(cls, models: Sequence[ScopeModel | None], device) -> ScopeBank:
        sources = tuple(sorted({s.source for m in models if m is not None for s in m.signals}, key=source_index))
        T, S = len(models), len(sources)
        signals = [[next((s for s in m.signals if s.source == src), None) if m is not None else None
                    for m in models] for src in sources]
        present = [s for sig in signals for s in sig if s is not None]
        dmax = max([s.means.shape[1] for s in present] + [1])
        r = max([s.basis.shape[1] for s in present] + [1])
        means, basis, inv = torch.zeros(S, T, dmax), torch.zeros(S, T, dmax, r), torch.zeros(S, T, r + 1)
        center, spread = torch.zeros(T, S), torch.ones(T, S)
        has = torch.zeros(T, S, dtype=torch.bool)
        dims = torch.ones(S)
        for j, sig in enumerate(signals):
            for t, s in enumerate(sig):
                if s is None:
                    continue
                d, k = s.basis.shape
                dims[j] = d
                means[j, t, :d], basis[j, t, :d, :k] = s.means[0].float().cpu(), s.basis.float().cpu()
                inv[j, t, :k], inv[j, t, -1] = s.inv_sd[:k].float().cpu(), s.inv_sd[-1].float().cpu()
                center[t, j], spread[t, j], has[t, j] = s.center, s.spread, True
        layers = torch.tensor([max(source_index(src) - 1, 0) for src in sources], dtype=torch.long)
        return cls(sources, layers.to(device), dims.to(device), means.to(device),
                   basis.permute(0, 2, 1, 3).reshape(S, dmax, T * r).contiguous().to(device), inv.to(device),
                   center.to(device), spread.to(device), has.to(device),
                   torch.tensor([m is not None and m.combine == "min" for m in models], device=device),
                   torch.tensor([m is not None for m in models], device=device))

    def inputs(self, feats: Tensor, taps: Tensor | None) -> Tensor:
        """(S, B, Dmax) what each source reads: a layer's mean token from `taps`, or the embedding."""
        dmax = self.means.shape[2]
        final = torch.nn.functional.pad(feats.float(), (0, dmax - feats.shape[1]))
        if all(s == FINAL for s in self.sources):
            return final.unsqueeze(0).expand(len(self.sources), -1, -1)
        for s in self.sources:
            signal_input(s, feats, taps)  # a clear error when the taps are missing or too shallow
        tapped = torch.nn.functional.pad(taps.float(), (0, dmax - taps.shape[2])).index_select(1, self.layers)
        is_final = torch.tensor([s == FINAL for s in self.sources], device=feats.device)
        return torch.where(is_final[None, :, None], final[:, None, :], tapped).transpose(0, 1)

    def score(self, feats: Tensor, taps: Tensor | None, rows: Tensor) -> Tensor:
        """(B,) each sample's scope score under its own domain (`rows` (B,) into the bank)."""
        B = feats.shape[0]
        out = torch.full((B,), math.inf, device=feats.device)
        if not self.sources:
            return out
        S, T, r = self.inv_sd.shape[0], self.inv_sd.shape[1], self.inv_sd.shape[2] - 1
        diff = self.inputs(feats, taps) - self.means.index_select(1, rows)  # (S, B, Dmax)
        proj = torch.bmm(diff, self.bases).view(S, B, T, r)[:, torch.arange(B, device=feats.device), rows]  # (S, B, r)
        raw = neg_d2(diff, proj, self.inv_sd.index_select(1, rows), self.dims[:, None])  # (S, B)
        z = (raw.T - self.center.index_select(0, rows)) / self.spread.index_select(0, rows)  # (B, S)
        has = self.has.index_select(0, rows)
        combined = torch.where(self.use_min.index_select(0, rows), combine_z(z, "min", has), combine_z(z, "mean", has))
        return torch.where(self.scoped.index_select(0, rows), combined, out)
