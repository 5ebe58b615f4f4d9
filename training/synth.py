"""The synthetic moderation world: icon classes drawn in rendering styles (DESIGN §7, §8).

Every image is a pure function of (seed, domain, label, index): drawn at 128 px with PIL and
downsampled, so the same seed gives byte-identical PNGs on any machine.

Styles form planted groups of related renderings:

* ``photo``, ``painting``: filled, shaded objects on textured, cluttered backgrounds;
* ``sketch``, ``pencil``, ``blueprint``: thin dark jittered outlines, no fill, on light paper
  (white paper, grey hatching on grainy paper, blue graph paper);
* ``comic``, ``poster``: flat saturated fill, thick light outline, dark halftone / plain
  backgrounds, icons squashed flat (cartoon squash-and-stretch).

The tiny CLIP is pretrained on a web-like corpus (`render_captioned`): mostly photos, plus a few
clean drawings and clip art described in their own words ("a drawing of a knife."). None of
those is one of the styles above; zero-shot with the photo template works on photos and falls
on the outline and flat styles, although the image features separate them: each group needs a
different correction, which is what group prompts are for.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

S = 128  # drawing canvas side
LABELS = {  # name -> unsafe
    "knife": True, "pistol": True, "syringe": True, "pill": True,
    "flower": False, "heart": False, "house": False, "tree": False,
}
GROUPS = [["photo", "painting"], ["sketch", "pencil", "blueprint"], ["comic", "poster"]]
DOMAINS = [d for g in GROUPS for d in g]
PROMPT = "a photo of a {}."  # the zero-shot template CLIP was pretrained with
COLORS = {
    "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (225, 200, 40),
    "purple": (140, 60, 170), "orange": (235, 130, 30), "brown": (120, 75, 40), "pink": (230, 120, 170),
}


# ------------------------------------------------------------------------------------------ shapes
def _ellipse(cx, cy, rx, ry, n=20):
    return [(cx + rx * math.cos(2 * math.pi * i / n), cy + ry * math.sin(2 * math.pi * i / n)) for i in range(n)]


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def shape_parts(label: str) -> list[tuple[str, list]]:
    """Parts of an icon in unit coordinates (centre 0.5, 0.5): ("poly", pts) or ("line", pts)."""
    if label == "knife":
        return [("poly", [(0.12, 0.47), (0.62, 0.40), (0.90, 0.50), (0.62, 0.56), (0.12, 0.53)]),
                ("poly", _rect(0.02, 0.45, 0.14, 0.56)[::-1] and [(-0.18, 0.45), (0.12, 0.45), (0.12, 0.56), (-0.18, 0.56)])]
    if label == "pistol":
        return [("poly", _rect(0.12, 0.30, 0.88, 0.44)),
                ("poly", [(0.18, 0.44), (0.40, 0.44), (0.34, 0.80), (0.14, 0.80)]),
                ("line", _ellipse(0.47, 0.50, 0.07, 0.07, 12) + [_ellipse(0.47, 0.50, 0.07, 0.07, 12)[0]])]
    if label == "syringe":
        return [("poly", _rect(0.25, 0.44, 0.72, 0.56)),
                ("poly", _rect(0.10, 0.38, 0.14, 0.62)),
                ("line", [(0.14, 0.50), (0.25, 0.50)]),
                ("line", [(0.72, 0.50), (0.95, 0.50)]),
                ("line", [(0.40, 0.44), (0.40, 0.50)]), ("line", [(0.55, 0.44), (0.55, 0.50)])]
    if label == "pill":
        cap = _ellipse(0.30, 0.5, 0.14, 0.14, 16)[4:13] + _ellipse(0.70, 0.5, 0.14, 0.14, 16)[12:] + \
            _ellipse(0.70, 0.5, 0.14, 0.14, 16)[:5]
        return [("poly", cap), ("line", [(0.50, 0.36), (0.50, 0.64)])]
    if label == "flower":
        petals = [("poly", _ellipse(0.5 + 0.15 * math.cos(a), 0.38 + 0.15 * math.sin(a), 0.10, 0.10, 12))
                  for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
        return [("line", [(0.5, 0.45), (0.5, 0.95)])] + petals + [("poly", _ellipse(0.5, 0.38, 0.07, 0.07, 12))]
    if label == "heart":
        pts = []
        for i in range(28):
            t = 2 * math.pi * i / 28
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((0.5 + x / 40, 0.48 - y / 40))
        return [("poly", pts)]
    if label == "house":
        return [("poly", _rect(0.22, 0.48, 0.78, 0.88)),
                ("poly", [(0.14, 0.50), (0.50, 0.16), (0.86, 0.50)]),
                ("poly", _rect(0.44, 0.64, 0.58, 0.88))]
    if label == "tree":
        return [("poly", _rect(0.44, 0.58, 0.56, 0.92)),
                ("poly", _ellipse(0.5, 0.38, 0.26, 0.24, 20))]
    raise ValueError(f"unknown label {label!r}; known: {sorted(LABELS)}")


def _place(parts, rng: np.random.Generator, squash: float = 1.0):
    """Random pose: rotation, scale, translation; returns parts in canvas pixels.

    `squash` < 1 flattens the icon (x stretched by 1/sqrt, y squashed by sqrt): the cartoon
    "squash and stretch" of the flat styles.
    """
    ang = rng.uniform(-0.6, 0.6)
    scale = rng.uniform(0.55, 0.85) * S
    dx, dy = rng.uniform(-0.12, 0.12, size=2) * S
    c, s = math.cos(ang), math.sin(ang)
    sx, sy = 1 / math.sqrt(squash), math.sqrt(squash)

    def tf(p):
        x, y = (p[0] - 0.5) * sx, (p[1] - 0.5) * sy
        return (S / 2 + dx + scale * (c * x - s * y), S / 2 + dy + scale * (s * x + c * y))

    return [(kind, [tf(p) for p in pts]) for kind, pts in parts]


def _jitter(pts, rng, amount):
    return [(x + rng.normal(0, amount), y + rng.normal(0, amount)) for x, y in pts]


def _closed(pts):
    return list(pts) + [pts[0]]


# ------------------------------------------------------------------------------------------ styles
def _noise_bg(rng, base, amp, blur):
    noise = rng.normal(0, amp, size=(S // 4, S // 4, 3))
    img = Image.fromarray(np.clip(np.array(base) + noise, 0, 255).astype(np.uint8)).resize((S, S), Image.BICUBIC)
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur else img


def _gradient_bg(rng):
    a, b = rng.uniform(40, 230, size=3), rng.uniform(40, 230, size=3)
    t = np.linspace(0, 1, S)[:, None, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    arr = a * (1 - t) + b * t + rng.normal(0, 10, size=(S, S, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _clutter(draw, rng, colors, n, width):
    for _ in range(n):
        x, y = rng.uniform(0, S, size=2)
        r = rng.uniform(3, 10)
        col = tuple(int(v) for v in colors[rng.integers(len(colors))])
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=col, width=width)
        else:
            draw.line([(x, y), (x + rng.uniform(-20, 20), y + rng.uniform(-20, 20))], fill=col, width=width)


def _mask(parts):
    m = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(m)
    for kind, pts in parts:
        if kind == "poly":
            d.polygon(pts, fill=255)
        else:
            d.line(pts, fill=255, width=5)
    return m


def _color(rng):
    name = list(COLORS)[rng.integers(len(COLORS))]
    return name, np.array(COLORS[name], dtype=float)


def draw_photo(parts, rng, painterly=False, color: str | None = None):
    img = _gradient_bg(rng)
    d = ImageDraw.Draw(img)
    _clutter(d, rng, [rng.uniform(60, 200, 3) for _ in range(3)], int(rng.integers(2, 6)), 2)
    _, col = _color(rng)
    if color is not None:
        col = np.array(COLORS[color], dtype=float)
    col = np.clip(col + rng.normal(0, 15, 3), 0, 255)
    # shading: the fill gets brighter towards a random light direction
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:S, 0:S] / S - 0.5
    shade = 0.75 + 0.5 * (xx * math.cos(ang) + yy * math.sin(ang))
    fill = np.clip(col[None, None, :] * shade[..., None] + rng.normal(0, 6, (S, S, 3)), 0, 255).astype(np.uint8)
    img.paste(Image.fromarray(fill), (0, 0), _mask(parts))
    if painterly:  # brushy canvas: blotchy colour, blurred edges, canvas weave
        img = img.filter(ImageFilter.ModeFilter(5)).filter(ImageFilter.GaussianBlur(1.2))
        weave = (np.sin(np.arange(S) * 1.7)[None, :] + np.sin(np.arange(S) * 1.3)[:, None]) * 10
        arr = np.array(img, dtype=float) * rng.uniform(0.8, 1.0) + weave[..., None] + 25
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    else:
        img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img


def _outline(d, parts, rng, col, width, jitter, passes):
    for _ in range(passes):
        for kind, pts in parts:
            pts = _closed(pts) if kind == "poly" else pts
            d.line(_jitter(pts, rng, jitter), fill=col, width=width, joint="curve")


def draw_sketch(parts, rng):
    img = _noise_bg(rng, (245, 243, 238), 6, 1)
    d = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.uniform(10, 60, 3))
    _outline(d, parts, rng, ink, 2, 1.2, 1)
    _clutter(d, rng, [np.array(ink)], int(rng.integers(1, 4)), 1)
    return img


def draw_pencil(parts, rng):
    img = _noise_bg(rng, (232, 228, 215), 18, 0)
    grey = int(rng.uniform(70, 120))
    # diagonal hatching clipped to the object
    hatch = Image.new("L", (S, S), 0)
    hd = ImageDraw.Draw(hatch)
    off = rng.uniform(0, 6)
    for k in range(-S, S, 6):
        hd.line([(k + off, 0), (k + off + S, S)], fill=255, width=1)
    hatch = Image.fromarray(np.minimum(np.array(hatch), np.array(_mask(parts))))
    img.paste(Image.new("RGB", (S, S), (grey + 40,) * 3), (0, 0), hatch)
    d = ImageDraw.Draw(img)
    _outline(d, parts, rng, (grey,) * 3, 2, 1.8, 2)
    _clutter(d, rng, [np.array([grey] * 3)], int(rng.integers(1, 4)), 1)
    return img


def draw_blueprint(parts, rng):
    """Engineering graph paper: pale blue, a finer blue grid, thin dark-blue lines."""
    base = np.array([205, 222, 245]) + rng.normal(0, 8, 3)
    img = Image.new("RGB", (S, S), tuple(int(v) for v in np.clip(base, 0, 255)))
    d = ImageDraw.Draw(img)
    step = int(rng.integers(10, 16))
    grid = tuple(int(v) for v in np.clip(base - np.array([70, 50, 20]), 0, 255))
    for k in range(0, S, step):
        d.line([(k, 0), (k, S)], fill=grid, width=1)
        d.line([(0, k), (S, k)], fill=grid, width=1)
    ink = (20, 40, 110)
    _outline(d, parts, rng, ink, 2, 0.8, 1)
    _clutter(d, rng, [np.array(ink)], int(rng.integers(1, 3)), 1)
    return img


def _dark(rng):
    """A dark saturated background colour (night scenes of comics and posters)."""
    return np.array(COLORS[list(COLORS)[rng.integers(len(COLORS))]], dtype=float) * rng.uniform(0.2, 0.35)


def _halftone(rng):
    bg = _dark(rng)
    img = Image.new("RGB", (S, S), tuple(int(v) for v in bg))
    d = ImageDraw.Draw(img)
    dot = tuple(int(v) for v in np.clip(bg * 2.2 + 20, 0, 255))
    step = int(rng.integers(7, 11))
    for y in range(0, S + step, step):
        for x in range((y // step % 2) * step // 2, S + step, step):
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=dot)
    return img


def draw_flat(parts, rng, poster=False):
    """Flat saturated fill with a thick light outline on a dark background (halftone or plain)."""
    img = Image.new("RGB", (S, S), tuple(int(v) for v in _dark(rng))) if poster else _halftone(rng)
    d = ImageDraw.Draw(img)
    _, col = _color(rng)
    fill = tuple(int(v) for v in col)
    if poster:  # offset flat shadow
        for kind, pts in parts:
            if kind == "poly":
                d.polygon([(x + 6, y + 6) for x, y in pts], fill=(5, 5, 5))
    for kind, pts in parts:
        if kind == "poly":
            d.polygon(pts, fill=fill)
    _outline(d, parts, rng, (250, 245, 225), 5 if not poster else 4, 0.0, 1)
    return img


SQUASH = {"comic": 0.45, "poster": 0.45}  # cartoon squash-and-stretch of the flat group
STYLES: dict[str, Callable] = {
    "photo": draw_photo,
    "painting": lambda p, r: draw_photo(p, r, painterly=True),
    "sketch": draw_sketch,
    "pencil": draw_pencil,
    "blueprint": draw_blueprint,
    "comic": draw_flat,
    "poster": lambda p, r: draw_flat(p, r, poster=True),
}


def render(domain: str, label: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """One image of `label` in `domain`'s style."""
    parts = _place(shape_parts(label), rng, SQUASH.get(domain, 1.0))
    img = STYLES[domain](parts, rng)
    return img.resize((size, size), Image.LANCZOS)


def draw_lineart(parts, rng):
    """Clean catalogue line art (pretraining corpus only): a plain black outline on white."""
    img = Image.new("RGB", (S, S), (255, 255, 255))
    _outline(ImageDraw.Draw(img), parts, rng, (0, 0, 0), 3, 0.0, 1)
    return img


def draw_clipart(parts, rng):
    """Clean clip art (pretraining corpus only): flat colour, black outline, plain light background."""
    img = Image.new("RGB", (S, S), tuple(int(v) for v in rng.uniform(215, 255, 3)))
    d = ImageDraw.Draw(img)
    fill = tuple(int(v) for v in _color(rng)[1])
    for kind, pts in parts:
        if kind == "poly":
            d.polygon(pts, fill=fill)
    _outline(d, parts, rng, (0, 0, 0), 3, 0.0, 1)
    return img


# The pretraining corpus, like web alt-text: mostly photos, a few drawings and clip art, each
# described in its own words. None of these is one of the world's domains; zero-shot uses the
# photo template, so the model knows drawings, but under other words than it is asked with.
CAPTIONS = {"photo": PROMPT, "drawing": "a drawing of a {}.", "cartoon": "a cartoon of a {}."}


def render_captioned(rng: np.random.Generator, size: int = 48,
                     mix: tuple[float, float] = (0.0, 0.0)) -> tuple[Image.Image, str, int]:
    """A captioned pretraining image and its label index.

    `mix` gives the fractions of line drawings ("a drawing of a knife.") and clip art ("a
    cartoon of a knife."); the rest are photos ("a photo of a red knife." / "a photo of a knife.").
    """
    li = int(rng.integers(len(LABELS)))
    label = list(LABELS)[li]
    color = list(COLORS)[rng.integers(len(COLORS))]
    u = rng.random()
    parts = _place(shape_parts(label), rng)
    if u < mix[0]:
        img, caption = draw_lineart(parts, rng), CAPTIONS["drawing"].format(label)
    elif u < mix[0] + mix[1]:
        img, caption = draw_clipart(parts, rng), CAPTIONS["cartoon"].format(label)
    else:
        img = draw_photo(parts, rng, color=color)
        caption = f"a photo of a {color} {label}." if rng.random() < 0.6 else CAPTIONS["photo"].format(label)
    return img.resize((size, size), Image.LANCZOS), caption, li


def image_rng(seed: int, domain: str, label: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, DOMAINS.index(domain), list(LABELS).index(label), index])


OPENAI_CATEGORIES = {"knife": "violence", "pistol": "violence", "syringe": "illicit", "pill": "illicit"}


def labels_json(domain: str) -> dict:
    """labels.json metadata (prompt, unsafe, display name, OpenAI category): never changes an image."""
    return {"domain": domain,
            "labels": [{"name": n, "prompt": PROMPT.format(n), "unsafe": u, "display": n.title(),
                        **({"openai_category": OPENAI_CATEGORIES[n]} if n in OPENAI_CATEGORIES else {})}
                       for n, u in LABELS.items()]}


def write_world(out: Path, seed: int = 0, per_class: int = 40, size: int = 48) -> dict:
    """Write DATA/<domain>/<label>/NNNN.png, DATA/<domain>/labels.json, DATA/planted_groups.json."""
    from tqdm import tqdm

    out = Path(out)
    for domain in tqdm(DOMAINS, desc="synth", unit="domain"):
        for label in LABELS:
            folder = out / domain / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                render(domain, label, image_rng(seed, domain, label, i), size).save(folder / f"{i:04d}.png",
                                                                                   optimize=False)
        (out / domain / "labels.json").write_text(json.dumps(labels_json(domain), indent=2) + "\n")
    planted = {"groups": GROUPS, "seed": seed, "per_class": per_class, "size": size,
               "labels": LABELS, "note": "styles in one group share a rendering family"}
    (out / "planted_groups.json").write_text(json.dumps(planted, indent=2) + "\n")
    log.info("wrote %d domains x %d labels x %d images to %s", len(DOMAINS), len(LABELS), per_class, out)
    return planted
