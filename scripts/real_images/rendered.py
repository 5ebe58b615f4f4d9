"""Rendered images: pages of the PDFs base packages ship (pdftoppm), Python's HTML docs printed to PDF by
headless chromium and rendered the same way (documents), and the same pages screenshotted (screenshots)."""

from __future__ import annotations

import glob
import gzip
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from .candidates import Candidate, h, stem
from .debian import dpkg_files

DOC_PDF_PACKAGES = ("zlib1g-dev", "nettle-dev", "fontconfig", "libtasn1-doc", "valgrind", "shared-mime-info", "bzip2")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


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


def shipped_pdf_pages() -> list[Candidate]:
    """Up to 4 pages of each PDF (gzipped or not) that DOC_PDF_PACKAGES ship."""
    out: list[Candidate] = []
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
    return out


def printed_pages(work: Path, page: str) -> list[Candidate]:
    """A Python doc page printed to PDF by chromium: up to 2 of its first 3 pages."""
    pdf = work / f"{stem(page)}.pdf"
    if not (chromium(["--no-pdf-header-footer", f"--print-to-pdf={pdf}", f"file://{page}"]) and pdf.exists()):
        return []
    data = pdf.read_bytes()
    pdf.unlink()
    return [Candidate("document", "apt:python3.11-doc+chromium-print", stem(page), f"{stem(page)}_p{n}",
                      (lambda b=png: b))
            for n, png in pdf_pages(data, spread(min(pdf_page_count(data), 3), 2))]


def screenshot(work: Path, page: str) -> list[Candidate]:
    """A Python doc page screenshotted by chromium at 1024x768."""
    shot = work / f"{stem(page)}.png"
    if not (chromium([f"--screenshot={shot}", "--window-size=1024,768", f"file://{page}"]) and shot.exists()):
        return []
    data = shot.read_bytes()
    shot.unlink()
    return [Candidate("screenshot", "apt:python3.11-doc+chromium", stem(page), stem(page), (lambda b=data: b))]


def rendered_candidates(work: Path, n_shots: int, n_printed: int) -> tuple[list[Candidate], list[str]]:
    """PDF pages (shipped PDFs and Python doc pages printed by chromium) and chromium screenshots."""
    out: list[Candidate] = []
    notes: list[str] = []
    if shutil.which("pdftoppm") is None:
        notes.append("poppler-utils (pdftoppm): no document pages")
    else:
        out += shipped_pdf_pages()
        if chromium_bin():
            out += parallel(lambda page: printed_pages(work, page), python_doc_pages(n_printed, "print"),
                            "print to pdf")
    if chromium_bin() is None:
        notes.append("chromium: no browser screenshots, no printed documents")
    else:
        out += parallel(lambda page: screenshot(work, page), python_doc_pages(n_shots, "shot"), "screenshots")
    return out, notes
