"""One front door to a frozen open_clip CLIP: `load_clip(ModelSpec(...))`.

`pretrained` in a spec is one of
  * ``"embedded"``: the project's tiny CLIP shipped inside this package (no network);
  * a path to a local checkpoint file (``.pt``, ``.bin`` or ``.safetensors``);
  * an open_clip pretrained tag such as ``"openai"`` (downloads where the network allows);
  * ``None``: random init (tests and benchmarks; same FLOPs as the real model).

`tokenizer` in a spec is an optional local Hugging Face tokenizer directory, for towers whose
tokenizer open_clip would otherwise download (SigLIP, SigLIP2); it needs the `hf` extra.

The training-only writer of the embedded model lives in `promptclip.embedded_writer`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors import safe_open

from .towers import TextTower, vision_tower

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_DIR = Path(__file__).parent / "embedded"
EMBEDDED_ARCH = "tiny-clip"
EMBEDDED_WEIGHTS = EMBEDDED_DIR / f"{EMBEDDED_ARCH}.safetensors"
_SPARSE_IDS = "text.token_embedding.ids"
_SPARSE_ROWS = "text.token_embedding.rows"

LEGACY_FAMILY = "open_clip-vit"  # the only family served before bundles recorded it
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ClipLoadError(RuntimeError):
    """The CLIP named by a spec could not be built; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    model: str = EMBEDDED_ARCH  # open_clip architecture name ("ViT-B-16") or a path to an open_clip JSON config
    pretrained: str | None = EMBEDDED  # "embedded", a local checkpoint path, an open_clip tag, or None
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    precision: str = "fp32"  # fp32 | fp16 | bf16 (half precisions only on CUDA)
    cache_dir: str | None = None  # where open_clip looks for / stores downloaded weights
    tokenizer: str | None = None  # local Hugging Face tokenizer directory (offline SigLIP); None: open_clip's

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.precision != "fp32" and not str(self.device).startswith("cuda"):
            raise ValueError(f"precision {self.precision!r} needs a CUDA device; got device={self.device!r}")


@dataclass(frozen=True)
class BaseModelInfo:
    """What a prompt bundle must agree with: written into every manifest, checked on load."""

    architecture: str
    family: str  # image tower family: open_clip-vit | timm-vit (SigLIP) | timm-eva (EVA02, PE-Core)
    weights: str  # "tag:openai", "sha256:<16 hex>" of a checkpoint file, or "random:<16 hex>" of the state dict
    embed_dim: int
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    image_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def mismatches(self, other: dict[str, Any]) -> list[str]:
        """Fields of a manifest's `base_model` that disagree with this model, as readable strings."""
        out = []
        other = {"family": LEGACY_FAMILY, **other}  # bundles from before families were recorded
        for key, mine in self.to_dict().items():
            if key not in other:
                out.append(f"{key} missing (model has {mine!r})")
            elif other[key] != mine:
                out.append(f"{key}: bundle has {other[key]!r}, model has {mine!r}")
        return out


@dataclass
class LoadedCLIP:
    model: torch.nn.Module  # open_clip CLIP, frozen, in eval mode
    preprocess: Callable  # PIL image -> (3, H, W) tensor, open_clip's eval transform
    tokenizer: Callable  # list[str] -> (N, context_length) LongTensor
    info: BaseModelInfo
    spec: ModelSpec


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_state(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def register_config(name: str, config: dict[str, Any]) -> None:
    """Make an architecture config known to open_clip under `name` (idempotent)."""
    open_clip.factory._MODEL_CONFIGS[name] = config


@contextlib.contextmanager
def _root_log_filter(keep):
    """open_clip logs through the root logger; drop its records that `keep` rejects."""
    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _register_embedded() -> bool:
    if EMBEDDED_ARCH in open_clip.factory._MODEL_CONFIGS:
        return True
    if not EMBEDDED_WEIGHTS.exists():
        return False
    with safe_open(str(EMBEDDED_WEIGHTS), "pt") as f:
        meta = f.metadata() or {}
    register_config(EMBEDDED_ARCH, json.loads(meta["open_clip_config"]))
    return True


def _load_embedded_state(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if _SPARSE_IDS in state:
        ids, rows = state.pop(_SPARSE_IDS), state.pop(_SPARSE_ROWS)
        table = torch.zeros(int(meta["vocab_size"]), rows.shape[1], dtype=rows.dtype)
        table[ids] = rows
        state["token_embedding.weight"] = table
    return state


def _is_local_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(
        pretrained
    ).exists()


def load_clip(spec: ModelSpec) -> LoadedCLIP:
    """Build a frozen open_clip CLIP from `spec`.

    Args:
        spec: architecture, weights source, device, precision and optional tokenizer directory.

    Returns:
        LoadedCLIP with the frozen model (eval mode, no grad), its eval preprocess, tokenizer
        and the `BaseModelInfo` bundles are checked against.

    Raises:
        ClipLoadError: unknown architecture, missing file, weights or tokenizer that cannot be
            fetched (e.g. offline and not cached), or a tower deep prompts cannot serve
            (convolutional: the message names it). The message names the spec and says what to do.
    """
    model_name = _resolve_architecture(spec)
    pretrained = spec.pretrained
    source = _weights_source(model_name, pretrained)
    # the embedded weights are loaded right below; open_clip's "initialized randomly" would mislead
    quiet = (_root_log_filter(lambda r: "initialized randomly" not in r.getMessage()) if pretrained == EMBEDDED
             else contextlib.nullcontext())
    try:
        with quiet:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=source, precision=spec.precision, device=spec.device, cache_dir=spec.cache_dir)
    except Exception as e:  # hub/network errors surface as many types; turn them into one actionable error
        raise ClipLoadError(
            f"could not load weights for model={model_name!r} pretrained={pretrained!r}: {_first_line(e)}. "
            "If this machine is offline, download the weights elsewhere and pass the local checkpoint path "
            "as pretrained (MODERATION_PRETRAINED=/path/to/open_clip_model.safetensors), or pre-populate "
            "the cache (cache_dir / HF_HOME) on a machine with network access."
        ) from None

    if pretrained == EMBEDDED:
        state = _load_embedded_state(EMBEDDED_WEIGHTS)
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
        model.to(device=spec.device, dtype=PRECISIONS[spec.precision])
        weights = "sha256:" + _sha256_file(EMBEDDED_WEIGHTS)[:16]
    elif pretrained is None:
        weights = "random:" + _sha256_state(model)[:16]
    elif _is_local_path(pretrained):
        weights = "sha256:" + _sha256_file(Path(pretrained))[:16]
    else:
        weights = f"tag:{pretrained}"
    model.eval().requires_grad_(False)
    info = _base_model_info(model_name, model, weights)
    tokenizer = _load_tokenizer(model_name, spec)
    log.info("loaded CLIP %s (%s, %s towers) on %s/%s", model_name, weights, info.family, spec.device,
             spec.precision)
    return LoadedCLIP(model=model, preprocess=preprocess, tokenizer=tokenizer, info=info, spec=spec)


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def _resolve_architecture(spec: ModelSpec) -> str:
    """The open_clip architecture name of `spec`, registering a JSON config or the embedded one."""
    model_name, pretrained = spec.model, spec.pretrained
    if model_name.endswith(".json"):  # a custom architecture: register the config under its file stem
        cfg_path = Path(model_name)
        if not cfg_path.is_file():
            raise ClipLoadError(f"model config file {model_name!r} does not exist")
        model_name = cfg_path.stem
        register_config(model_name, json.loads(cfg_path.read_text()))
    if model_name == EMBEDDED_ARCH:  # its architecture lives in the embedded file's header
        if not _register_embedded() and pretrained == EMBEDDED:
            raise ClipLoadError(
                f"embedded model weights not found at {EMBEDDED_WEIGHTS}; rebuild them with "
                "`python -m training pretrain-tiny` (see README)"
            )
    elif pretrained == EMBEDDED:
        raise ClipLoadError(f"pretrained='embedded' only exists for model {EMBEDDED_ARCH!r}, got {model_name!r}")
    if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ClipLoadError(
            f"unknown open_clip architecture {model_name!r}; known e.g. ViT-B-16, ViT-B-32, ViT-L-14 "
            f"(open_clip.list_models()) or {EMBEDDED_ARCH!r} with pretrained='embedded'"
        )
    return model_name


def _weights_source(model_name: str, pretrained: str | None) -> str | None:
    """What open_clip's `pretrained` gets: None (random init / embedded), a checked path or a known tag."""
    if pretrained is None or pretrained == EMBEDDED:
        return None
    if _is_local_path(pretrained):
        if not Path(pretrained).is_file():
            raise ClipLoadError(f"checkpoint file {pretrained!r} for model {model_name!r} does not exist")
        return pretrained
    known = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in known:
        raise ClipLoadError(f"model {model_name!r} has no pretrained tag {pretrained!r}; known tags: {known}")
    return pretrained


def _base_model_info(model_name: str, model: torch.nn.Module, weights: str) -> BaseModelInfo:
    """Shapes and tower family of a built CLIP; a tower deep prompts cannot serve is refused here."""
    try:
        vision, text = vision_tower(model.visual), TextTower(model)
    except ValueError as e:
        raise ClipLoadError(f"model {model_name!r}: {e}") from None
    image_size = model.visual.image_size
    return BaseModelInfo(
        architecture=model_name,
        family=vision.family,
        weights=weights,
        embed_dim=text.embed_dim,
        vision_width=vision.width,
        vision_layers=len(vision.blocks),
        text_width=text.width,
        text_layers=len(text.blocks),
        image_size=int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size),
    )


def _load_tokenizer(model_name: str, spec: ModelSpec) -> Callable:
    """open_clip's tokenizer for `model_name`, or a Hugging Face one from the local `spec.tokenizer`."""
    text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    source = spec.tokenizer or text_cfg.get("hf_tokenizer_name")
    try:
        if not spec.tokenizer:
            return open_clip.get_tokenizer(model_name, cache_dir=spec.cache_dir)
        if not Path(spec.tokenizer).is_dir():
            raise FileNotFoundError(f"tokenizer directory {spec.tokenizer!r} does not exist")
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(spec.tokenizer, context_length=text_cfg.get("context_length", 77),
                           tokenizer_mode=text_cfg.get("tokenizer_mode"), **text_cfg.get("tokenizer_kwargs", {}))
    except Exception as e:
        extra = ("Install the Hugging Face extra: pip install 'promptclip-moderation[hf]'. "
                 if isinstance(e, ImportError) else "")
        raise ClipLoadError(
            f"could not load the tokenizer {source!r} of model {model_name!r}: {_first_line(e)}. {extra}"
            "Offline, save it on a machine with network access (python -c \"import open_clip; "
            f"open_clip.get_tokenizer('{model_name}').save_pretrained('DIR')\"), copy DIR here and pass it as "
            "MODERATION_TOKENIZER=DIR (service) or --tokenizer DIR (training)."
        ) from None
