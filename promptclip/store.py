"""The bundle store: ``<root>/<domain>/<version>.safetensors`` plus ``<root>/<domain>/CURRENT``.

Publishing writes the bundle under a temporary name, fsyncs, renames it into place, and only
then atomically replaces CURRENT. A crash at any point leaves CURRENT naming a complete file.
Older versions stay on disk, so a rollback only rewrites CURRENT. Published files are mode 0644
(folders 0755) whatever the umask or the writer's default (safetensors writes 0600), so a service
running as another user (the container's uid 10001) can read them. The domain router lives beside
the domains as ``<root>/_router/<version>.safetensors`` plus ``_router/CURRENT`` (promptclip.router),
published the same way; ``_router`` is no valid domain name, so `domains()` never lists it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .bundle import Bundle, BundleError, load_bundle, save_bundle
from .loading import BaseModelInfo
from .prompts import TASK_NAME
from .router import ROUTER_DIR, DomainRouter, load_router, save_router

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
FILE_MODE, DIR_MODE = 0o644, 0o755  # published files: readable by the service user
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def version_key(version: str) -> list:
    """Natural sort: v2 < v10, 2026-01-02 < 2026-01-10."""
    return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in re.split(r"(\d+)", version) if s]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _publish_file(final: Path, write, verify, make_current: bool) -> Path:
    """Write under the final name inside a hidden scratch dir (same filesystem), fsync, `verify` it,
    rename it into place, then replace CURRENT: nothing the loader would refuse appears beside it."""
    if final.exists():
        raise FileExistsError(f"{final} already exists; versions are immutable, publish a new one")
    created = not final.parent.is_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    if created:
        os.chmod(final.parent, DIR_MODE)
    scratch = final.parent / f".publish-{os.getpid()}-{final.stem}"
    scratch.mkdir(exist_ok=True)
    tmp = scratch / final.name
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        verify(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        scratch.rmdir()
    _fsync_dir(final.parent)
    if make_current:
        _atomic_write_text(final.parent / "CURRENT", final.stem + "\n")
    log.info("published %s", final)
    return final


class PromptStore:
    """Read and publish bundles under one root directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def domains(self) -> list[str]:
        """Domain directories that hold at least one bundle file."""
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir()
                      if d.is_dir() and TASK_NAME.match(d.name) and self.versions(d.name))

    def versions(self, domain: str) -> list[str]:
        """Published versions of `domain`, oldest first (temporary files are never listed)."""
        d = self.root / domain
        if not d.is_dir():
            return []
        vs = [p.stem for p in d.iterdir() if p.suffix == SUFFIX and VERSION.match(p.stem) and p.is_file()]
        return sorted(vs, key=version_key)

    def current_version(self, domain: str) -> str | None:
        """The version CURRENT names, else the highest version on disk, else None."""
        cur = self.root / domain / "CURRENT"
        if cur.is_file():
            return cur.read_text().strip()
        vs = self.versions(domain)
        return vs[-1] if vs else None

    def path(self, domain: str, version: str) -> Path:
        if not TASK_NAME.match(domain) or not VERSION.match(version):
            raise ValueError(f"bad domain/version {domain!r}/{version!r}")
        return self.root / domain / f"{version}{SUFFIX}"

    def load_current(self, domain: str, base: BaseModelInfo | None = None) -> Bundle:
        version = self.current_version(domain)
        if version is None:
            raise BundleError("missing", self.root / domain, "no bundle published for this domain")
        path = self.path(domain, version)
        if not path.is_file():
            raise BundleError("missing", path, f"CURRENT names version {version!r} but {path.name} does not exist")
        return load_bundle(path, base)

    def next_version(self, domain: str) -> str:
        nums = [int(v[1:]) for v in self.versions(domain) if re.fullmatch(r"v\d+", v)]
        return f"v{max(nums, default=0) + 1:04d}"

    def publish(self, bundle: Bundle, base: BaseModelInfo | None = None, make_current: bool = True) -> Path:
        """Write `bundle` atomically, verify it loads, then point CURRENT at it."""
        final = self.path(bundle.domain, bundle.version)
        return _publish_file(final, lambda tmp: save_bundle(bundle, tmp), lambda tmp: load_bundle(tmp, base),
                             make_current)

    # ------------------------------------------------------------------ the domain router
    def router_path(self, version: str) -> Path:
        if not VERSION.match(version):
            raise ValueError(f"bad router version {version!r}")
        return self.root / ROUTER_DIR / f"{version}{SUFFIX}"

    def router_version(self) -> str | None:
        """The router version CURRENT names (else the highest on disk), or None without a router."""
        return self.current_version(ROUTER_DIR)

    def load_router(self, base: BaseModelInfo | None = None) -> DomainRouter | None:
        """The current router, validated against `base`; None when the store has none."""
        version = self.router_version()
        if version is None:
            return None
        path = self.router_path(version)
        if not path.is_file():
            raise BundleError("missing", path, f"CURRENT names router version {version!r} but {path.name} "
                                               "does not exist")
        return load_router(path, base)

    def publish_router(self, router: DomainRouter, base: BaseModelInfo | None = None,
                       make_current: bool = True) -> Path:
        """Write a router file atomically, verify it loads, then point _router/CURRENT at it."""
        final = self.router_path(router.version)
        return _publish_file(final, lambda tmp: save_router(router, tmp), lambda tmp: load_router(tmp, base),
                             make_current)

    def rollback(self, domain: str, version: str, base: BaseModelInfo | None = None) -> Path:
        """Point CURRENT at an existing, valid version."""
        known = self.domains()
        if domain not in known:
            raise FileNotFoundError(f"unknown domain {domain!r} in store {self.root}; known domains: {known}")
        path = self.path(domain, version)
        if not path.is_file():
            raise FileNotFoundError(f"{domain} has no version {version!r}; available: {self.versions(domain)}")
        load_bundle(path, base)
        _atomic_write_text(path.parent / "CURRENT", version + "\n")
        log.info("rolled %s back to %s", domain, version)
        return path
