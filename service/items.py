"""What a request hands to the engine, and the view of the served domains a request is checked against.

Torch-free: the front-end processes (service.frontend) parse requests with these, and the
engine (service.pipeline) classifies them.

A *view* is what the routes read before they hand items over: the served domain names
(`domains`, a mapping), `known()` and whether images without a domain can be routed
(`routable`). In one process it is the registry's Snapshot; in a front end it is the engine's
last published `Catalog`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, validation_error

AUTO = "auto"  # the domain (or OpenAI `model`) that asks the router to pick


@dataclass
class Item:
    """One image of a request: its bytes and domain (None: route it), or the error it already failed with.

    `content_type` is what the review queue stores with the bytes; None: sniffed from the bytes."""

    data: bytes | None = None
    domain: str | None = None
    error: ApiError | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Catalog:
    """The served domains as the engine last published them (a front end's view)."""

    generation: int = -1
    domains: dict[str, str] = field(default_factory=dict)  # domain -> version
    routable: bool = False

    def known(self) -> list[str]:
        return sorted(self.domains)


def check_domain(value: Any) -> str:
    if value is None:
        raise validation_error("field 'domain' is required")
    if not isinstance(value, str):
        raise validation_error("field 'domain' must be a string")
    if not value:
        raise validation_error("field 'domain' must not be empty")
    return value  # matched verbatim: "photo " is an unknown domain (404), never normalised into another


def requested_domain(value: Any) -> str | None:
    """None (route the image) for a missing domain or `auto`; else the checked domain name."""
    return None if value is None or value == AUTO else check_domain(value)


def lookup(view: Any, domain: str) -> Any:
    """The served entry for `domain` (a dict lookup: request input never becomes a path); 404 if unknown."""
    entry = view.domains.get(domain)
    if entry is None:
        shown = domain if len(domain) <= 64 else domain[:64] + "..."
        raise ApiError(404, "unknown_domain", f"unknown domain {shown!r}; known domains: {view.known()}")
    return entry


def no_router(view: Any, field: str = "domain") -> ApiError:
    """422 for an image sent without a domain while no router can route it (stores without a router keep
    the contract they had: the domain is required)."""
    return validation_error(f"field {field!r} is required: no domain router is loaded (known domains: "
                            f"{view.known()}); publish one with python -m training router --data DATA "
                            "--store STORE")


_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def sniff_content_type(data: bytes) -> str:
    """The exact image type of bytes the decoder accepted (JPEG, PNG, WebP, GIF, BMP)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return "application/octet-stream"
