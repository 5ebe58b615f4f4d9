"""One candidate's bytes as a file the service accepts: kept format and bytes where it can, SVG, GIMP
patterns and other refused formats converted to PNG, over-limit images downscaled; and seeded photo crops."""

from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess

from PIL import Image

from .candidates import MAX_BYTES, MAX_PIXELS, MIN_SIDE, Candidate, h

KEEP = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


def gimp_pattern(data: bytes) -> Image.Image:
    """A GIMP .pat pattern (header: size, version, width, height, bytes, 'GPAT', name; then pixels)."""
    hsize, _version, w, h_, depth = struct.unpack(">5I", data[:20])
    if data[20:24] != b"GPAT":
        raise ValueError("not a GIMP pattern")
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[depth]
    return Image.frombytes(mode, (w, h_), data[hsize:hsize + w * h_ * depth])


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    if img.mode not in ("RGB", "RGBA", "L", "LA", "P", "I;16"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    img.save(buf, "PNG")
    return buf.getvalue()


def svg_png(data: bytes, width: int) -> bytes | None:
    if shutil.which("rsvg-convert") is None:
        return None
    r = subprocess.run(["rsvg-convert", "-w", str(width), "--keep-aspect-ratio", "-f", "png"], input=data,
                       capture_output=True, timeout=120)
    return r.stdout if r.returncode == 0 and r.stdout else None


def encode_like(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt in ("JPEG", "MPO"):
        img.convert("RGB").save(buf, "JPEG", quality=92)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=90)
    elif fmt == "GIF":
        img.save(buf, "GIF")
    elif fmt == "BMP":
        img.convert("RGB").save(buf, "BMP")
    else:
        return png_bytes(img)
    return buf.getvalue()


def normalise(c: Candidate, raw: bytes) -> tuple[bytes, str, tuple[int, int], str] | None:
    """(bytes, extension, size, how) for the service, or None to skip. how: original|converted|downscaled."""
    how = "original"
    if c.name.endswith(".pat") or raw[20:24] == b"GPAT":
        raw, how = png_bytes(gimp_pattern(raw)), "converted"
    elif raw.lstrip()[:5] in (b"<?xml", b"<svg ") or c.name.endswith(".svg") or b"<svg" in raw[:512]:
        png = svg_png(raw, c.svg_width)
        if png is None:
            return None
        raw, how = png, "converted"
    try:
        img = Image.open(io.BytesIO(raw))
        img.size  # noqa: B018
    except Exception:
        return None
    fmt = img.format or ""
    if fmt not in KEEP:
        try:
            img.seek(0)
            raw, how, fmt = png_bytes(img.convert("RGBA") if img.mode in ("P", "PA") else img), "converted", "PNG"
            img = Image.open(io.BytesIO(raw))
        except Exception:
            return None
    w, hh = img.size
    if min(w, hh) < MIN_SIDE:
        return None
    if len(raw) > MAX_BYTES or w * hh > MAX_PIXELS:
        img.load()
        scale = min(1.0, (MAX_PIXELS / (w * hh)) ** 0.5)
        while True:
            small = img.resize((max(1, int(w * scale)), max(1, int(hh * scale))), Image.LANCZOS)
            raw = encode_like(small, fmt)
            if len(raw) <= MAX_BYTES:
                break
            scale *= 0.8
        how, (w, hh) = "downscaled", small.size
    return raw, KEEP[fmt], (w, hh), how


def crops(c: Candidate, raw: bytes, n: int) -> list[tuple[bytes, tuple[int, int], tuple[int, int, int, int]]]:
    """n random crops (35-70% of the short side, aspect 3:4..4:3), seeded by the image's id."""
    img = Image.open(io.BytesIO(raw))
    fmt = img.format
    img.load()
    w, hh = img.size
    out = []
    for i in range(n):
        rng = random.Random(int(h(c.source, c.origin_id, c.name, str(i))[:16], 16))
        side = rng.uniform(0.35, 0.7) * min(w, hh)
        aspect = rng.uniform(0.75, 4 / 3)
        cw, ch = max(MIN_SIDE, int(side * aspect ** 0.5)), max(MIN_SIDE, int(side / aspect ** 0.5))
        cw, ch = min(cw, w), min(ch, hh)
        x, y = rng.randint(0, w - cw), rng.randint(0, hh - ch)
        box = (x, y, x + cw, y + ch)
        out.append((encode_like(img.crop(box), fmt), (cw, ch), box))
    return out
