"""Test helpers for routing: images whose domain a router can learn on a random-init CLIP, and that router.

Each domain gets a colour; an image of a domain is that colour plus noise, so bare-CLIP features
separate the domains even without pretraining.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from promptclip import LoadedCLIP, PromptStore
from promptclip.router import fit_router, make_router

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 210, 40), (150, 60, 170)]


def domain_image(k: int, seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """PNG bytes: domain k's colour plus noise."""
    rng = np.random.default_rng([k, seed])
    arr = np.clip(np.array(COLOURS[k % len(COLOURS)])[None, None] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@torch.inference_mode()
def bare_features(clip: LoadedCLIP, images: list[bytes]) -> torch.Tensor:
    x = torch.stack([clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    return clip.model.encode_image(x, normalize=True).float()


def publish_router(store: PromptStore, clip: LoadedCLIP, domains: list[str], version: str = "v0001",
                   min_confidence: float = 0.5, shots: int = 12):
    """Fit a router on `shots` images per domain (domain k: colour k) and publish it into `store`."""
    images = [domain_image(k, s) for k in range(len(domains)) for s in range(shots)]
    labels = torch.arange(len(domains)).repeat_interleave(shots)
    tensors = fit_router(bare_features(clip, images), labels, domains, l2=1e-3)
    router = make_router(tensors, domains, clip.info, version=version, min_confidence=min_confidence)
    return store.publish_router(router, base=clip.info)
