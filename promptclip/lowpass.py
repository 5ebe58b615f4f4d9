"""A bundle's input low-pass: a Gaussian blur of the preprocessed image before its prompted pass.

A domain whose decisions move when the same image arrives resized or re-encoded as a JPEG (flat
colour and hard outlines, e.g. comics) can be trained and served on low-passed inputs: the blur
removes most of what a resampling or a JPEG round trip changes. The bundle records the standard
deviation (`Manifest.prompt["input_lowpass"]`, in pixels of the model's input); training, export,
the service and the backlog all blur that domain's rows through `lowpass_rows` before the
prompted tower. The frozen tower's bare pass (the domain router, a zero-shot guard) reads the
unfiltered image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_SIGMA = 8.0  # a larger blur leaves nothing of a 224 px input to classify; refused in a manifest


@functools.lru_cache(maxsize=32)
def _kernel(sigma: float, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(channels, 1, k, k) Gaussian, k = 2 * ceil(3 sigma) + 1: torchvision's gaussian_blur kernel, built once."""
    k = 2 * math.ceil(3 * sigma) + 1
    x = torch.linspace(-(k - 1) * 0.5, (k - 1) * 0.5, steps=k)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = pdf / pdf.sum()
    return torch.mm(k1[:, None], k1[None, :]).to(device, dtype).expand(channels, 1, k, k).contiguous()


def lowpass(images: Tensor, sigma: float) -> Tensor:
    """(B, C, H, W) blurred by a Gaussian of `sigma` pixels (kernel 2 * ceil(3 sigma) + 1, reflected edges:
    torchvision's `gaussian_blur`, bit for bit, without rebuilding its kernel per call); `images` itself
    when sigma is 0."""
    if sigma <= 0:
        return images
    w = _kernel(float(sigma), images.shape[1], images.dtype, images.device)
    r = w.shape[-1] // 2
    return F.conv2d(F.pad(images, (r, r, r, r), mode="reflect"), w, groups=images.shape[1])


def lowpass_rows(images: Tensor, sigmas: Sequence[float]) -> Tensor:
    """Row b blurred by `sigmas[b]` (0: unchanged), one blur per distinct sigma; `images` itself when
    no row asks for one."""
    wanted = sorted({s for s in sigmas if s > 0})
    if not wanted:
        return images
    if len(wanted) == 1 and all(s > 0 for s in sigmas):
        return lowpass(images, wanted[0])
    out = images.clone()
    for s in wanted:
        idx = torch.tensor([i for i, v in enumerate(sigmas) if v == s], device=images.device)
        out[idx] = lowpass(images[idx], s)
    return out


def checked_sigma(value: object, where: str) -> float:
    """A manifest's `input_lowpass` as a float in [0, MAX_SIGMA]; ValueError naming `where` otherwise."""
    try:
        sigma = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: input_lowpass must be a number, got {value!r}") from None
    if not 0.0 <= sigma <= MAX_SIGMA:  # also refuses NaN
        raise ValueError(f"{where}: input_lowpass must be in [0, {MAX_SIGMA}] pixels, got {value!r}")
    return sigma
