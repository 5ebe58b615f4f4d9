"""The reviewer page's files (HTML shell, script, style), read once at import so request handlers never
touch the filesystem."""

from __future__ import annotations

from importlib import resources

NAMES = ("review.html", "review.js", "review.css")
FILES: dict[str, str] = {n: resources.files(__name__).joinpath(n).read_text(encoding="utf-8") for n in NAMES}
