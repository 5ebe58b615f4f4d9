"""Out-of-distribution probe images: things no domain's labels describe (DESIGN §11).

A generator of its own, separate from the world's (`synth.py` stays frozen): the probe set
measures how often the service flags, or calls in scope, an image that is none of a domain's
labels. Every image is a pure function of (seed, kind, index).

Kinds:

* ``noise``: uniform, Gaussian-blurred and salt-and-pepper noise;
* ``flat``: one flat colour, sometimes with sensor noise;
* ``gradient``: linear and radial colour gradients;
* ``text``: rendered words and lines of text on plain backgrounds;
* ``screen``: screenshots and diagrams: windows with title bars, buttons, text lines, bar and
  line charts;
* ``pattern``: checkerboards, stripes, dots;
* ``shapes``: objects that are no label (star, arrow, ring, triangle, cross, crescent, spiral),
  drawn in every world style, so that only the object differs from in-domain images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from . import synth

S = synth.S
WORDS = ("invoice total due", "login password", "hello world", "meeting at 3pm", "SALE 50% OFF", "error 404",
         "quarterly report", "terms of service", "lorem ipsum dolor", "click here", "settings", "OK Cancel")


def _rgb(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _noise(rng):
    k = rng.integers(3)
    if k == 0:
        return Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
    if k == 1:
        img = Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
        return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 6))))
    arr = np.full((S, S, 3), rng.integers(60, 200), dtype=np.uint8)
    mask = rng.random((S, S))
    arr[mask < 0.1] = 0
    arr[mask > 0.9] = 255
    return Image.fromarray(arr)


def _flat(rng):
    arr = np.broadcast_to(np.array(_rgb(rng), dtype=float), (S, S, 3)).copy()
    if rng.random() < 0.5:
        arr += rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _gradient(rng):
    a, b = np.array(_rgb(rng), float), np.array(_rgb(rng), float)
    yy, xx = np.mgrid[0:S, 0:S] / S
    if rng.random() < 0.5:
        ang = rng.uniform(0, 2 * math.pi)
        t = (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang) + 0.5
    else:
        cx, cy = rng.uniform(0.2, 0.8, 2)
        t = np.hypot(xx - cx, yy - cy) / 0.8
    t = np.clip(t, 0, 1)[..., None]
    return Image.fromarray(np.clip(a * (1 - t) + b * t, 0, 255).astype(np.uint8))


def _text(rng):
    bg = _rgb(rng, 180) if rng.random() < 0.7 else _rgb(rng, 0, 80)
    ink = _rgb(rng, 0, 70) if sum(bg) > 384 else _rgb(rng, 190)
    img = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=int(rng.integers(11, 26)))
    y = rng.uniform(2, 20)
    while y < S - 10:
        d.text((rng.uniform(0, 12), y), WORDS[rng.integers(len(WORDS))], fill=ink, font=font)
        y += rng.uniform(14, 30)
    return img


def _screen(rng):
    img = Image.new("RGB", (S, S), _rgb(rng, 200))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.5:  # an application window
        d.rectangle([0, 0, S, 14], fill=_rgb(rng, 40, 160))
        for i in range(3):
            d.ellipse([4 + 10 * i, 4, 10 + 10 * i, 10], fill=_rgb(rng))
        y = 22
        while y < S - 12:
            d.rectangle([8, y, 8 + rng.uniform(30, 110), y + 4], fill=_rgb(rng, 90, 170))
            y += int(rng.integers(9, 15))
        d.rectangle([S - 40, S - 20, S - 8, S - 8], fill=_rgb(rng, 30, 200), outline=(60, 60, 60))
    else:  # a chart
        d.line([(12, S - 12), (S - 6, S - 12)], fill=(40, 40, 40), width=2)
        d.line([(12, 8), (12, S - 12)], fill=(40, 40, 40), width=2)
        n = int(rng.integers(4, 9))
        vals = rng.uniform(10, S - 30, n)
        if rng.random() < 0.5:
            w = (S - 24) / n
            for i, v in enumerate(vals):
                d.rectangle([16 + i * w, S - 12 - v, 16 + (i + 0.7) * w, S - 12], fill=_rgb(rng, 30, 220))
        else:
            pts = [(14 + i * (S - 24) / (n - 1), S - 12 - v) for i, v in enumerate(vals)]
            d.line(pts, fill=_rgb(rng, 0, 200), width=2)
    return img


def _pattern(rng):
    a, b = _rgb(rng), _rgb(rng)
    step = int(rng.integers(4, 20))
    yy, xx = np.mgrid[0:S, 0:S]
    k = rng.integers(3)
    if k == 0:
        m = ((xx // step + yy // step) % 2).astype(bool)
    elif k == 1:
        m = ((xx + (yy if rng.random() < 0.5 else 0)) // step % 2).astype(bool)
    else:
        m = (np.hypot(xx % step - step / 2, yy % step - step / 2) < step / 4)
    return Image.fromarray(np.where(m[..., None], np.array(a, np.uint8), np.array(b, np.uint8)))


def _star(n=5):
    return [(0.5 + (0.45 if i % 2 == 0 else 0.2) * math.cos(math.pi * i / n - math.pi / 2),
             0.5 + (0.45 if i % 2 == 0 else 0.2) * math.sin(math.pi * i / n - math.pi / 2)) for i in range(2 * n)]


def _ring():
    return [(0.5 + r * math.cos(2 * math.pi * i / 24), 0.5 + r * math.sin(2 * math.pi * i / 24))
            for r in (0.4, 0.25) for i in range(25)]


NO_LABEL_SHAPES: dict[str, list[tuple[str, list]]] = {
    "star": [("poly", _star())],
    "arrow": [("poly", [(0.05, 0.42), (0.6, 0.42), (0.6, 0.25), (0.95, 0.5), (0.6, 0.75), (0.6, 0.58),
                        (0.05, 0.58)])],
    "ring": [("line", _ring())],
    "triangle": [("poly", [(0.5, 0.08), (0.92, 0.88), (0.08, 0.88)])],
    "cross": [("poly", [(0.38, 0.05), (0.62, 0.05), (0.62, 0.38), (0.95, 0.38), (0.95, 0.62), (0.62, 0.62),
                        (0.62, 0.95), (0.38, 0.95), (0.38, 0.62), (0.05, 0.62), (0.05, 0.38), (0.38, 0.38)])],
    "crescent": [("poly", [(0.5 + 0.42 * math.cos(a), 0.5 + 0.42 * math.sin(a)) for a in np.linspace(0.6, 5.7, 14)]
                  + [(0.62 + 0.3 * math.cos(a), 0.5 + 0.3 * math.sin(a)) for a in np.linspace(5.3, 1.0, 12)])],
    "spiral": [("line", [(0.5 + 0.04 * t * math.cos(t), 0.5 + 0.04 * t * math.sin(t))
                         for t in np.linspace(0, 11, 60)])],
}


def _shapes(rng):
    name = list(NO_LABEL_SHAPES)[rng.integers(len(NO_LABEL_SHAPES))]
    domain = synth.DOMAINS[rng.integers(len(synth.DOMAINS))]
    parts = synth._place(NO_LABEL_SHAPES[name], rng, synth.SQUASH.get(domain, 1.0))
    return synth.STYLES[domain](parts, rng)


KINDS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "noise": _noise, "flat": _flat, "gradient": _gradient, "text": _text, "screen": _screen,
    "pattern": _pattern, "shapes": _shapes,
}


def render_ood(kind: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """One probe image of `kind`, drawn at 128 px and downsampled like the world's images."""
    if kind not in KINDS:
        raise ValueError(f"unknown OOD kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind](rng).convert("RGB").resize((size, size), Image.LANCZOS)


def ood_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7919, list(KINDS).index(kind), index])


def ood_images(seed: int, per_kind: int, size: int = 48) -> dict[str, list[Image.Image]]:
    """kind -> `per_kind` probe images, in memory."""
    return {k: [render_ood(k, ood_rng(seed, k, i), size) for i in range(per_kind)] for k in KINDS}


def write_ood(out: Path, seed: int = 0, per_kind: int = 40, size: int = 48) -> dict:
    """Write OUT/<kind>/NNNN.png; returns {kind: count}."""
    out = Path(out)
    counts = {}
    for kind, images in ood_images(seed, per_kind, size).items():
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            img.save(out / kind / f"{i:04d}.png", optimize=False)
        counts[kind] = len(images)
    return counts
