"""Prompt bundles: one self-describing safetensors file per task version (DESIGN §5).

Tensors: ``vision.group``, ``vision.private``, ``text.group``, ``text.private``, each
(layers, tokens, width). Header metadata holds one key, ``bundle``: the JSON manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .loading import LEGACY_FAMILY, BaseModelInfo
from .lowpass import checked_sigma
from .prompts import PromptConfig, TaskPrompts, check_task_name
from .scope import ScopeModel, scope_tensor_names

log = logging.getLogger(__name__)

# 2: calibrated decisions (labels[].calibration, decision, negatives); 3: a fitted scope model
# (decision.scope.model + scope.<source>.* tensors) and the calibration split's features
SCHEMA_VERSION = 3
FITTED_SCOPE_SCHEMA = 3  # calibrated bundles older than this stored raw features the service had to fit
TENSOR_NAMES = ("vision.group", "vision.private", "text.group", "text.private")
OPTIONAL_TENSORS = ("labels.cache",  # (C, embed_dim) class means of prompted shot features, fp16 (label cache)
                    "calibration.features",  # (N, embed_dim) calibration images' embeddings, fp16 (recalibration)
                    "calibration.labels",  # (N,) their label indices
                    "calibration.scope",  # (N,) their cross-fitted scope scores
                    "calibration.bare")  # (N, embed_dim) their frozen-tower features, fp16 (a zero-shot guard's)
DEFAULT_TEMPLATE = "{placeholders} {prompt}"  # placeholders: one slot per prompt token, right after SOT


class BundleError(ValueError):
    """A bundle that must not be served. `kind` says which check failed."""

    def __init__(self, kind: str, path: Path | str, message: str):
        super().__init__(f"{path}: {kind}: {message}")
        self.kind = kind  # corrupt | manifest | base_model | shape | checksum | stem
        self.path = str(path)


@dataclass
class Label:
    name: str  # label shown to pipelines, e.g. "knife"
    prompt: str  # text fed to CLIP, e.g. "a photo of a knife."
    unsafe: bool = False  # flagging this label is a moderation hit
    threshold: float = 0.5  # probability at or above which an unsafe label is flagged
    calibration: dict[str, Any] | None = None  # {"method": "platt", "a", "b", "n_pos", "n"}; None: uncalibrated
    openai_category: str | None = None  # OpenAI moderation category this label also reports, e.g. "violence"


@dataclass
class Manifest:
    domain: str
    version: str
    group: dict[str, Any]  # {"id": "g0", "members": ["photo", "painting"]}
    base_model: dict[str, Any]  # BaseModelInfo.to_dict()
    prompt: dict[str, Any]  # {"depth": L, "group_tokens": g, "private_tokens": p, optional "cache_weight": w}
    labels: list[Label]
    template: str = DEFAULT_TEMPLATE
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out metrics, at least "accuracy"
    decision: dict[str, Any] = field(default_factory=dict)  # targets, review threshold, scope cuts (DESIGN §11)
    negatives: dict[str, Any] = field(default_factory=dict)  # {"template", "names"}: NegLabel vocabulary
    created_at: str = ""
    sha256: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | str = "<bundle>") -> Manifest:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            log.warning("%s: ignoring unknown manifest keys %s (written by a newer version?)", path, unknown)
        missing = sorted(k for k in ("domain", "version", "group", "base_model", "prompt", "labels") if k not in d)
        if missing:
            raise BundleError("manifest", path, f"missing manifest keys {missing}")
        try:
            label_keys = {f.name for f in fields(Label)}
            labels = [Label(**{k: v for k, v in lab.items() if k in label_keys}) for lab in d["labels"]]
            m = cls(**{k: v for k, v in d.items() if k in known and k != "labels"}, labels=labels)
        except TypeError as e:
            raise BundleError("manifest", path, f"malformed manifest: {e}") from None
        if m.schema_version > SCHEMA_VERSION:
            raise BundleError("manifest", path, f"schema_version {m.schema_version} is newer than supported "
                                                f"{SCHEMA_VERSION}")
        if not m.labels:
            raise BundleError("manifest", path, "no labels")
        return m


@dataclass
class Bundle:
    manifest: Manifest
    tensors: dict[str, Tensor]  # TENSOR_NAMES -> (layers, tokens, width), float32; OPTIONAL_TENSORS too

    @property
    def domain(self) -> str:
        return self.manifest.domain

    @property
    def version(self) -> str:
        return self.manifest.version

    def vision_prompts(self) -> Tensor:
        """(depth_v, n_group + n_private, Wv), the layout PromptedCLIP expects."""
        return torch.cat([self.tensors["vision.group"], self.tensors["vision.private"]], dim=1)

    def text_prompts(self) -> Tensor:
        """(depth_t, n_group + n_private, Wt)."""
        return torch.cat([self.tensors["text.group"], self.tensors["text.private"]], dim=1)

    def scope_model(self) -> ScopeModel | None:
        """The fitted scope model (`promptclip.scope`), None when the bundle has none (all in scope)."""
        return ScopeModel.from_bundle(self.manifest.decision.get("scope", {}).get("model"), self.tensors)

    def calibration(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """The calibration split as exported: (N, E) embeddings, (N,) label indices, (N,) cross-fitted
        scope scores; None when the bundle does not carry it."""
        if "calibration.features" not in self.tensors:
            return None
        t = self.tensors
        return t["calibration.features"], t["calibration.labels"].long(), t["calibration.scope"]

    def calibration_bare(self) -> Tensor | None:
        """(N, E) the calibration images' frozen-tower features, carried by bundles with a zero-shot guard."""
        return self.tensors.get("calibration.bare")

    def label_cache(self) -> tuple[Tensor | None, float]:
        """The (C, E) label cache and its blend weight (None, 0.0: text features alone)."""
        return self.tensors.get("labels.cache"), float(self.manifest.prompt.get("cache_weight", 0.0))

    @property
    def lowpass(self) -> float:
        """The input low-pass of this domain's prompted pass, in pixels (`promptclip.lowpass`; 0: none)."""
        return checked_sigma(self.manifest.prompt.get("input_lowpass", 0.0), f"{self.domain} prompt")

    @property
    def prompt_config(self) -> PromptConfig:
        p = self.manifest.prompt
        return PromptConfig(group_tokens=p["group_tokens"], private_tokens=p["private_tokens"], depth=p["depth"])


FP16_TENSORS = ("labels.cache", "calibration.features", "calibration.bare")  # and the scope model's means and bases


def stored_form(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """`tensors` in the dtypes a bundle stores them (the loader widens fp16 ones to fp32), so a bundle
    re-published from a loaded one (label edits, recalibration) keeps the bytes of what it did not change."""
    return {k: (v.to(torch.float16).contiguous() if k in FP16_TENSORS or k.endswith((".means", ".basis")) else v)
            for k, v in tensors.items()}


def tensor_sha256(tensors: dict[str, Tensor]) -> str:
    """Checksum over the tensor bytes in name order (independent of the header)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def bundle_from_prompts(prompts: TaskPrompts, task: str, *, version: str, base: BaseModelInfo,
                        labels: list[Label], metrics: dict[str, Any] | None = None,
                        template: str = DEFAULT_TEMPLATE) -> Bundle:
    """Cut one task's (group, private) prompts out of a trained TaskPrompts."""
    vg, tg = prompts.group_params(task)
    vp, tp = prompts.private_params(task)
    gi = prompts.group_of[task]
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous().clone()
               for name, t in zip(TENSOR_NAMES, (vg, vp, tg, tp), strict=True)}
    manifest = Manifest(
        domain=task, version=version,
        group={"id": f"g{gi}", "members": list(prompts.groups[gi])},
        base_model=base.to_dict(),
        prompt={"depth": max(prompts.depth_v, prompts.depth_t), "group_tokens": prompts.config.group_tokens,
                "private_tokens": prompts.config.private_tokens},
        labels=labels, template=template, metrics=dict(metrics or {}),
    )
    return Bundle(manifest, tensors)


def save_bundle(bundle: Bundle, path: Path | str) -> Path:
    """Write `bundle` to `path` (the caller handles atomicity; see PromptStore.publish)."""
    path = Path(path)
    check_task_name(bundle.domain)
    m = bundle.manifest
    m.sha256 = tensor_sha256(bundle.tensors)
    m.created_at = m.created_at or datetime.now(UTC).isoformat(timespec="seconds")
    save_file({k: v.contiguous() for k, v in bundle.tensors.items()}, str(path), metadata={"bundle": m.to_json()})
    return path


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The raw manifest dict from a bundle's header, without reading the tensors."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:  # parses and validates the header only
            meta = f.metadata() or {}
        return json.loads(meta["bundle"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as e:
        raise BundleError("corrupt", path, f"not a bundle safetensors file ({type(e).__name__}: {e})") from None


def load_bundle(path: Path | str, base: BaseModelInfo | None = None) -> Bundle:
    """Load and validate a bundle.

    Refuses (BundleError, with `kind`) a file that is unreadable (corrupt), whose manifest is
    malformed (manifest), whose stem differs from its version (stem), whose checksum differs
    (checksum), whose base model differs from `base` (base_model), or whose tensor shapes do
    not fit its manifest or `base` (shape). Unknown manifest keys only warn.
    """
    path = Path(path)
    raw = read_manifest(path)
    manifest = Manifest.from_dict(raw, path)
    check_stem(path, manifest.version)
    try:
        check_task_name(manifest.domain)
        checked_sigma(manifest.prompt.get("input_lowpass", 0.0), "prompt")
    except ValueError as e:
        raise BundleError("manifest", path, str(e)) from None
    if base is not None:
        _check_family(manifest.base_model, base, path)
        bad = base.mismatches(manifest.base_model)
        if bad:
            raise BundleError("base_model", path, "trained for another CLIP: " + "; ".join(bad))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BundleError("corrupt", path, f"unreadable tensors: {e}") from None
    if manifest.decision and manifest.schema_version < FITTED_SCOPE_SCHEMA:
        raise BundleError("manifest", path, f"schema_version {manifest.schema_version} bundles keep raw scope "
                                            "features instead of a fitted scope model; re-export it with "
                                            "`python -m training export` (or `fit`)")
    scope_names = scope_tensor_names(manifest.decision.get("scope", {}).get("model"))
    allowed = set(TENSOR_NAMES + OPTIONAL_TENSORS) | set(scope_names)
    if not set(TENSOR_NAMES) | set(scope_names) <= set(tensors) <= allowed:
        raise BundleError("shape", path, f"tensors {sorted(tensors)}, expected {sorted(TENSOR_NAMES)} "
                                         f"plus its scope model's {sorted(scope_names)} "
                                         f"(optional: {list(OPTIONAL_TENSORS)})")
    check_tensors(tensors, manifest.sha256, path)
    _check_shapes(tensors, manifest, path)
    return Bundle(manifest, {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()})


def _check_family(trained: dict[str, Any], base: BaseModelInfo, path: Path) -> None:
    family = trained.get("family", LEGACY_FAMILY)  # bundles from before families were recorded
    if family != base.family:
        raise BundleError("base_model", path, f"trained for a {family} image tower ({trained.get('architecture')!r}), "
                                              f"but the loaded CLIP {base.architecture!r} has a {base.family} tower; "
                                              "prompts do not transfer across tower families")


def _check_shapes(tensors: dict[str, Tensor], m: Manifest, path: Path) -> None:
    p, b = m.prompt, m.base_model
    want = {
        "vision.group": (min(p["depth"], b["vision_layers"]), p["group_tokens"], b["vision_width"]),
        "vision.private": (min(p["depth"], b["vision_layers"]), p["private_tokens"], b["vision_width"]),
        "text.group": (min(p["depth"], b["text_layers"]), p["group_tokens"], b["text_width"]),
        "text.private": (min(p["depth"], b["text_layers"]), p["private_tokens"], b["text_width"]),
    }
    bad = [f"{k} is {tuple(tensors[k].shape)}, expected {v}" for k, v in want.items() if tuple(tensors[k].shape) != v]
    cal = [tensors.get(f"calibration.{k}") for k in ("features", "labels", "scope")]
    if any(t is None for t in cal) and not all(t is None for t in cal):
        bad.append("calibration.features, calibration.labels and calibration.scope come together")
    elif cal[0] is not None and (cal[0].dim() != 2 or cal[0].shape[1] != b["embed_dim"]
                                 or tuple(cal[1].shape) != (cal[0].shape[0],) or tuple(cal[2].shape) != (cal[0].shape[0],)
                                 or bool(((cal[1] < 0) | (cal[1] >= len(m.labels))).any())):
        bad.append(f"calibration.features {tuple(cal[0].shape)} / labels {tuple(cal[1].shape)} / scope "
                   f"{tuple(cal[2].shape)} do not fit (N, {b['embed_dim']}) / (N,) label indices / (N,)")
    plain = tensors.get("calibration.bare")
    if plain is not None and (cal[0] is None or tuple(plain.shape) != tuple(cal[0].shape)):
        bad.append(f"calibration.bare {tuple(plain.shape)} must match calibration.features "
                   f"{None if cal[0] is None else tuple(cal[0].shape)}")
    try:
        model = ScopeModel.from_bundle(m.decision.get("scope", {}).get("model"), tensors)
    except ValueError as e:
        bad.append(str(e))
    else:
        for s in model.signals if model is not None else ():
            want_dim = b["embed_dim"] if s.source == "final" else b["vision_width"]
            if s.means.shape[1] != want_dim:
                bad.append(f"scope signal {s.source} has dimension {s.means.shape[1]}, expected {want_dim}")
            elif s.source != "final" and int(s.source[5:]) > b["vision_layers"]:
                bad.append(f"scope signal {s.source}: the image tower has {b['vision_layers']} layers")
    cache = tensors.get("labels.cache")
    if cache is not None and tuple(cache.shape) != (len(m.labels), b["embed_dim"]):
        bad.append(f"labels.cache is {tuple(cache.shape)}, expected {(len(m.labels), b['embed_dim'])}")
    if bad:
        raise BundleError("shape", path, "; ".join(bad))


def check_stem(path: Path, version: str) -> None:
    """A published file's stem is its manifest version (bundles and routers alike)."""
    if path.stem != version:
        raise BundleError("stem", path, f"file stem {path.stem!r} differs from manifest version {version!r}")


def check_tensors(tensors: dict[str, Tensor], sha256: str, path: Path | str) -> None:
    """The validation every published artifact (bundle or router) gets: its checksum, then finite values.

    A NaN passes the checksum (it is what was written) and then silently breaks decisions: a NaN
    prompt makes every score NaN, a NaN scope parameter puts every image out of scope. Refused
    (BundleError 'shape'), naming the tensors.
    """
    digest = tensor_sha256(tensors)
    if digest != sha256:
        raise BundleError("checksum", path, f"tensor sha256 {digest[:16]}... differs from manifest {sha256[:16]}...")
    bad = sorted(name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if bad:
        raise BundleError("shape", path, f"tensors {bad} hold NaN or Inf values")
