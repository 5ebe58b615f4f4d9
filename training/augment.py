"""Training-image augmentation: the re-encodings an image meets on its way to the service (resampled
to another size, saved as JPEG), and the few-shot flip and shift.

A client rarely sends the pixels a domain's images were drawn with: it resizes them and saves
them as JPEG. `reencode` draws one such trip (a size, a format, a quality) and decodes the result
through the service's own decode (`promptclip.images.decode_rgb`), so that training can show the
same image both ways and learn to ignore the trip, as a CLIP trained on web images has: the tiny
CLIP's pretraining (`pretrain-tiny --reencoded`) and the prompts' (`fit --reencoded-shots`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from promptclip.images import decode_rgb, load_rgb

SIZES = (0.75, 1.0, 1.0, 1.5, 2.0, 3.0, 4.0)  # the trip's side, in multiples of the image's own
JPEG_QUALITY = (40, 95)  # drawn uniformly, both included
JPEG_SHARE = 0.8  # the rest are saved as PNG: resampling alone


def reencode(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """`img` resized by a factor drawn from SIZES (bicubic) and saved as JPEG (quality drawn from
    JPEG_QUALITY) or PNG, then decoded as the service decodes an upload. A trip that keeps the size is
    always a JPEG; the result keeps the trip's size (the model's preprocess resizes it)."""
    factor = float(rng.choice(SIZES))
    jpeg = factor == 1.0 or rng.random() < JPEG_SHARE
    if factor != 1.0:
        img = img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))), Image.BICUBIC)
    buf = io.BytesIO()
    if jpeg:
        img.save(buf, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    else:
        img.save(buf, "PNG")
    return decode_rgb(buf.getvalue())


def trip_variants(preprocess: Callable[[Image.Image], Tensor], paths: list[Path], trips: int, seed: int) -> Tensor:
    """(trips, N, 3, H, W): image i of `paths` after `trips` client trips (`reencode`), drawn from a
    generator seeded by (seed, i), each then `preprocess`ed as the training images are."""
    out = []
    for i, p in enumerate(paths):
        rng, img = np.random.default_rng([seed, i]), load_rgb(p)
        out.append(torch.stack([preprocess(reencode(img, rng)) for _ in range(trips)]))
    return torch.stack(out, 1)


def flip_shift(x: Tensor, gen: torch.Generator, shift: int = 3) -> Tensor:
    """Random horizontal flip + shift by up to `shift` px (reflect-padded), per sample of (B, 3, H, W)."""
    B, _, H, W = x.shape
    flip = torch.rand(B, generator=gen) < 0.5
    off = torch.randint(0, 2 * shift + 1, (B, 2), generator=gen)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = F.pad(x, (shift,) * 4, mode="reflect")
    return torch.stack([pad[i, :, off[i, 0]:off[i, 0] + H, off[i, 1]:off[i, 1] + W] for i in range(B)])
