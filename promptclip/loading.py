"""One front door to a frozen open_clip CLIP: `load_clip(ModelSpec(...))`.

`pretrained` in a spec is one of
  * ``"embedded"``: the project's tiny CLIP shipped inside this package (no network);
  * a path to a local checkpoint file (``.pt``, ``.bin`` or ``.safetensors``);
  * an open_clip pretrained tag such as ``"openai"`` (downloads where the network allows);
  * ``None``: random init (tests and benchmarks; same FLOPs as the real model).
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
from open_clip.transformer import VisionTransformer
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_DIR = Path(__file__).parent / "embedded"
EMBEDDED_ARCH = "tiny-clip"
EMBEDDED_WEIGHTS = EMBEDDED_DIR / f"{EMBEDDED_ARCH}.safetensors"
_SPARSE_IDS = "text.token_embedding.ids"
_SPARSE_ROWS = "text.token_embedding.rows"

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

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.precision != "fp32" and not str(self.device).startswith("cuda"):
            raise ValueError(f"precision {self.precision!r} needs a CUDA device; got device={self.device!r}")


@dataclass(frozen=True)
class BaseModelInfo:
    """What a prompt bundle must agree with: written into every manifest, checked on load."""

    architecture: str
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


def save_embedded_model(model: torch.nn.Module, config: dict[str, Any], path: Path = EMBEDDED_WEIGHTS,
                        extra_metadata: dict[str, str] | None = None) -> Path:
    """Save a (tiny) CLIP as fp16 safetensors with its open_clip config in the header.

    The token embedding table is mostly rows no caption ever used; only rows that differ from
    zero-mean init noise matter, so we keep just the rows in `used_token_ids` when the metadata
    names them (`extra_metadata["used_token_ids"]` as JSON), and unused rows load as zeros.
    """
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = {"open_clip_config": json.dumps(config), "format": "promptclip-embedded-1"}
    meta.update(extra_metadata or {})
    if "used_token_ids" in meta:
        ids = torch.tensor(sorted(set(json.loads(meta["used_token_ids"]))), dtype=torch.int64)
        table = state.pop("token_embedding.weight")
        state[_SPARSE_IDS] = ids
        state[_SPARSE_ROWS] = table[ids].contiguous()
        meta["vocab_size"] = str(table.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=meta)
    canonical_header(tmp)
    os.replace(tmp, path)
    return path


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors header in sorted key order, so equal contents give equal bytes.

    safetensors writes `__metadata__` from a hash map, in an order that changes from process to
    process; the tensor data and offsets do not depend on the header's key order.
    """
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | dict(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    if len(text) > n:  # the same entries serialize to the same length; never grow the header
        raise ValueError(f"{path}: canonical header is longer than the original ({len(text)} > {n})")
    Path(path).write_bytes(raw[:8] + text.ljust(n, b" ") + raw[8 + n:])


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
        spec: architecture, weights source, device and precision.

    Returns:
        LoadedCLIP with the frozen model (eval mode, no grad), its eval preprocess, tokenizer
        and the `BaseModelInfo` bundles are checked against.

    Raises:
        ClipLoadError: unknown architecture, missing file, or weights that cannot be fetched
            (e.g. offline and not cached). The message names the spec and says what to do.
    """
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

    create = dict(precision=spec.precision, device=spec.device, cache_dir=spec.cache_dir)
    try:
        if pretrained == EMBEDDED:  # loaded right below; open_clip's "initialized randomly" would mislead
            with _root_log_filter(lambda r: "initialized randomly" not in r.getMessage()):
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, **create)
        elif pretrained is None:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, **create)
        elif _is_local_path(pretrained):
            if not Path(pretrained).is_file():
                raise ClipLoadError(f"checkpoint file {pretrained!r} for model {model_name!r} does not exist")
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, **create)
        else:
            known = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in known:
                raise ClipLoadError(f"model {model_name!r} has no pretrained tag {pretrained!r}; known tags: {known}")
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, **create)
    except ClipLoadError:
        raise
    except Exception as e:  # hub/network errors surface as many types; turn them into one actionable error
        raise ClipLoadError(
            f"could not load weights for model={model_name!r} pretrained={pretrained!r}: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}. "
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
    if not isinstance(model.visual, VisionTransformer):
        raise ClipLoadError(f"deep prompts need a ViT image tower; {model_name!r} has {type(model.visual).__name__}")
    text = getattr(model, "text", model)
    image_size = model.visual.image_size
    info = BaseModelInfo(
        architecture=model_name,
        weights=weights,
        embed_dim=int(model.visual.output_dim),
        vision_width=int(model.visual.transformer.width),
        vision_layers=len(model.visual.transformer.resblocks),
        text_width=int(text.transformer.width),
        text_layers=len(text.transformer.resblocks),
        image_size=int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size),
    )
    tokenizer = open_clip.get_tokenizer(model_name)
    log.info("loaded CLIP %s (%s) on %s/%s", model_name, weights, spec.device, spec.precision)
    return LoadedCLIP(model=model, preprocess=preprocess, tokenizer=tokenizer, info=info, spec=spec)
