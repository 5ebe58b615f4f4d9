"""Random-init models, bundles with the full decision rule, a router and JPEG inputs shared by the benches."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image

from promptclip import (
    GaussianSignal,
    ImageRunner,
    Label,
    PromptConfig,
    PromptStore,
    ScopeModel,
    TaskPrompts,
    bundle_from_prompts,
)

DOMAINS = ["photo", "sketch", "comic", "painting", "cartoon", "clipart", "infograph", "quickdraw"]
LABELS = ["safe", "weapon", "drugs", "gore", "nudity"]


def save_random_clip(model_name: str, path: Path, seed: int = 0) -> Path:
    """A random-init open_clip model as a local checkpoint the server can load by path."""
    import json

    import open_clip
    from safetensors.torch import save_file

    from promptclip import register_config

    if model_name.endswith(".json"):  # a custom architecture, as load_clip and the server accept it
        register_config(Path(model_name).stem, json.loads(Path(model_name).read_text()))
        model_name = Path(model_name).stem
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def publish_bundles(clip, store_dir: Path, domains: list[str], n_group: int, n_private: int,
                    negatives: int = 256, scope_rank: int = 64, guard: float = 0.0) -> None:
    """One bundle per domain; domains paired into groups, as grouping would do.

    Each carries the full decision rule that export writes (calibrated labels, `negatives`
    negative labels, a scope model with a Gaussian signal per image-tower layer and one on the
    embedding, each of rank `scope_rank`), so the server does all of its scoring work; with
    `guard` > 0, a zero-shot guard of that weight too (a bare forward pass per image).
    """
    info = clip.info
    groups = [domains[i:i + 2] for i in range(0, len(domains), 2)]
    prompts = TaskPrompts(domains, groups, PromptConfig(n_group, n_private), info.vision_width,
                          info.vision_layers, info.text_width, info.text_layers)
    prompts.reset_parameters(std=0.02, generator=torch.Generator().manual_seed(0))
    store = PromptStore(store_dir)
    for d in domains:
        labels = [Label(name=lab, prompt=f"a {d} of {lab}.", unsafe=lab != "safe", threshold=0.5,
                        calibration={"method": "platt", "a": 1.0, "b": 0.0}) for lab in LABELS]
        bundle = bundle_from_prompts(prompts, d, version="v0001", base=info, labels=labels, metrics={"accuracy": 0.0})
        bundle.manifest.negatives = {"template": "a photo of a {}.", "names": list(IMAGENET_CLASSNAMES[:negatives])}
        scope = _random_scope(info, scope_rank, torch.Generator().manual_seed(len(d)))
        bundle.manifest.decision = {"review_threshold": 0.3, "scope": {"cut": -1e9, "model": scope.manifest()}}
        if guard:
            bundle.manifest.decision["guard"] = {"weight": guard}
        bundle.tensors.update(scope.tensors())
        store.publish(bundle, base=info)


def _random_scope(info, rank: int, g: torch.Generator) -> ScopeModel:
    """A scope model of the shape export fits (every layer's mean token and the embedding), random values."""
    sources = [(f"layer{k}", info.vision_width) for k in range(1, info.vision_layers + 1)] + [("final", info.embed_dim)]
    signals = []
    for src, dim in sources:
        r = min(rank, dim)
        basis, _ = torch.linalg.qr(torch.randn(dim, r, generator=g))
        signals.append(GaussianSignal(src, torch.randn(1, dim, generator=g), basis, torch.rand(r + 1, generator=g) + 0.5))
    return ScopeModel(tuple(signals))


def publish_router(clip, store_dir: Path, domains: list[str], pixels: list[torch.Tensor]) -> None:
    """A router over `domains` fitted on the bench images (domain i % D): real routing cost, arbitrary routes."""
    from promptclip.router import fit_router, make_router

    p = next(clip.model.parameters())
    with torch.inference_mode():
        feats = clip.model.encode_image(torch.stack(pixels).to(p.device, p.dtype), normalize=True).float().cpu()
    labels = torch.arange(len(pixels)) % len(domains)
    router = make_router(fit_router(feats, labels, domains), domains, clip.info, version="v0001")
    PromptStore(store_dir).publish_router(router, base=clip.info)


def bare_and_prompted(clip, enc, store_dir: Path, domains: list[str], pixels: list[torch.Tensor], batch: int,
                      device) -> dict:
    """The two encoder calls the HTTP benches divide by: bare `encode_image` and the prompted tower
    (CUDA-graph runner, the store's bundles, domains mixed in one batch of `batch` images)."""
    runner = ImageRunner(enc, buckets=(batch,))
    bank = torch.stack([PromptStore(store_dir).load_current(d, clip.info).vision_prompts() for d in domains])
    bank = bank.to(device, enc.dtype)
    images = torch.stack([pixels[i % len(pixels)] for i in range(batch)]).to(device, enc.dtype)  # fp16 weights
    idx = (torch.arange(batch) % len(domains)).to(device)
    return {"bare": lambda: clip.model.encode_image(images, normalize=True),
            "prompted": lambda: runner(images, bank[idx])}


def make_jpegs(n: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs: smooth colour fields plus fine noise, quality 90."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = torch.from_numpy(rng.random((1, 3, 6, 8), dtype=np.float32))
        img = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        arr = img.permute(1, 2, 0).numpy() * 220 + rng.normal(0, 12, (height, width, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


