"""Images in installed Debian packages, read from the files dpkg lists for each
(/var/lib/dpkg/info/PKG.list); one rule per package says which files, of what kind, from which origin."""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from .candidates import IMAGE_EXT, MAX_PIXELS, MIN_SIDE, Candidate, cap, on_disk, one_per_origin, stem

APT = ("desktop-base gnome-backgrounds mate-backgrounds xfdesktop4-data plasma-workspace-wallpapers gimp-help-en "
       "gnome-user-docs python3.11-doc tango-icon-theme adwaita-icon-theme xplanet-images krita-data gimp-data "
       "poppler-utils librsvg2-bin chromium")
TOOLS = ("poppler-utils", "librsvg2-bin", "chromium")  # in APT for the command it prints; they ship no images


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


def _plasma(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        m = re.match(r"/usr/share/wallpapers/([^/]+)/contents/images/(\d+)x(\d+)\.(jpg|png)$", f)
        if m and int(m.group(2)) >= int(m.group(3)):  # landscape only
            kind = "photo" if m.group(1) in PLASMA_PHOTOS else "artwork"
            out.append(on_disk(kind, src, m.group(1), f"{m.group(1)}_{m.group(2)}x{m.group(3)}", f))
    # the largest variant that fits the service's pixel limit (5120x2880 = 14.7 Mpx does)
    return one_per_origin(out, lambda c: (_res(c.path) <= MAX_PIXELS, _res(c.path)))


def _desktop_base(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        m = re.match(r"/usr/share/desktop-base/([^/]+)-theme/wallpaper/contents/images/1920x1080\.svg$", f)
        if m:
            out.append(on_disk("artwork", src, m.group(1), m.group(1), f, svg_width=1920))
        m = re.match(r"/usr/share/desktop-base/([^/]+)-theme/grub/grub-16x9\.png$", f)
        if m:
            out.append(on_disk("artwork", src, m.group(1), f"{m.group(1)}_grub", f))
    return out


def _backgrounds(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        if f.startswith("/usr/share/backgrounds/") and IMAGE_EXT.search(f):
            base = stem(f)
            out.append(on_disk("artwork", src, re.sub(r"-[ld]$", "", base), base, f, svg_width=1920))
    return out


def _mate(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        m = re.match(r"/usr/share/backgrounds/mate/(\w+)/(.+)\.(jpg|png)$", f)
        if m:
            origin = re.sub(r"_\d+x\d+$", "", m.group(2))
            out.append(on_disk("photo" if m.group(1) == "nature" else "artwork", src, origin, m.group(2), f))
    return one_per_origin(out, lambda c: -c.file_size())  # the smallest file: the plain-named one


def _xplanet(src: str, files: list[str]) -> list[Candidate]:
    return [on_disk("photo", src, stem(f), stem(f), f) for f in files if f.endswith(".jpg")]


def _gimp_help(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        if re.search(r"/help/en/images/(dialogs|menus|preferences|tool-options)/.*\.png$", f):
            rel = f.split("/images/", 1)[1]
            out.append(on_disk("screenshot", src, rel, rel, f))
    return cap(out, 80)


def _gnome_user_docs(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        if "/help/C/gnome-help/figures/" in f:
            if f.endswith(".png"):
                out.append(on_disk("screenshot", src, stem(f), stem(f), f))
            elif f.endswith(".svg"):
                out.append(on_disk("diagram" if "diagram" in f else "icon", src, stem(f), stem(f), f,
                                   svg_width=256))
    return [c for c in out if c.kind != "icon"] + cap([c for c in out if c.kind == "icon"], 20)


def _python_doc(src: str, files: list[str]) -> list[Candidate]:
    return [on_disk("diagram" if "tk_msg" not in f and "installer" not in f else "screenshot", src,
                    stem(f), stem(f), f)
            for f in files if "/html/_images/" in f]


def _krita(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        if f.startswith("/usr/share/krita/patterns/") and re.search(r"\.(png|pat)$", f) \
                and min(_pattern_size(f)) >= MIN_SIDE:  # many are tiny tiles: skip before the cap
            out.append(on_disk("texture", src, stem(f), stem(f), f))
    return cap(out, 80)


def _gimp_data(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        m = re.match(r"/usr/share/gimp/2.0/patterns/(\w+)/(.+)\.pat$", f)
        if m and min(_pattern_size(f)) >= MIN_SIDE:
            out.append(on_disk("texture", src, f"{m.group(1)}/{m.group(2)}", f"{m.group(1)}_{m.group(2)}", f))
    return out


def _tango(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        m = re.match(r"/usr/share/icons/Tango/32x32/(\w+)/(.+)\.png$", f)
        if m:
            out.append(on_disk("icon", src, m.group(2), f"{m.group(1)}_{m.group(2)}", f))
    return cap(one_per_origin(out, lambda c: c.name), 40)


def _adwaita(src: str, files: list[str]) -> list[Candidate]:
    out = []
    for f in files:
        m = re.match(r"/usr/share/icons/Adwaita/(512x512|96x96)/(\w+)/(.+)\.png$", f)
        if m:
            origin = re.sub(r"(\.symbolic)?$", "", m.group(3))
            out.append(on_disk("icon", src, origin, f"{m.group(1)}_{m.group(2)}_{m.group(3)}", f))
    big = one_per_origin([c for c in out if c.name.startswith("512")], lambda c: c.name)
    small = [c for c in out if c.name.startswith("96") and c.origin_id not in {b.origin_id for b in big}]
    return cap(big, 30) + cap(one_per_origin(small, lambda c: c.name), 15)


RULES: dict[str, Callable[[str, list[str]], list[Candidate]]] = {
    "plasma-workspace-wallpapers": _plasma, "desktop-base": _desktop_base, "gnome-backgrounds": _backgrounds,
    "xfdesktop4-data": _backgrounds, "mate-backgrounds": _mate, "xplanet-images": _xplanet,
    "gimp-help-en": _gimp_help, "gnome-user-docs": _gnome_user_docs, "python3.11-doc": _python_doc,
    "krita-data": _krita, "gimp-data": _gimp_data, "tango-icon-theme": _tango, "adwaita-icon-theme": _adwaita,
}


def apt_rules(pkg: str, files: list[str]) -> list[Candidate]:
    rule = RULES.get(pkg)
    return rule(f"apt:{pkg}", files) if rule else []


def apt_candidates() -> tuple[list[Candidate], list[str]]:
    out, missing = [], []
    for pkg in APT.split():
        if pkg in TOOLS:
            continue
        files = dpkg_files(pkg)
        if files is None:
            missing.append(pkg)
            continue
        out += apt_rules(pkg, files)
    return out, missing
