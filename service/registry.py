"""The bundles being served, as one immutable snapshot swapped atomically on reload.

A snapshot holds, on the model's device:
  * one vision prompt bank per prompt shape (depth, n): (T_shape, depth, n, Wv);
  * the scoring banks of `promptclip.decisions` (label and negative-label embeddings, the scope
    models), computed once per bundle load: serving runs only the image tower;
  * per-domain metadata (labels, thresholds, decision rule, version, group, metrics, checksum);
  * the store's domain router (promptclip.router), when one is published, reloaded like a bundle.

Requests capture the snapshot when they arrive and finish on it, so a reload never changes a
request half way. A bundle the core loader refuses is reported and the previous version of
that domain keeps serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from promptclip import Bundle, BundleError, LoadedCLIP, PromptedCLIP, PromptStore
from promptclip.banks import bundle_bank
from promptclip.decisions import Banks, DecisionRule, DomainBank
from promptclip.router import ROUTER_DIR, DomainRouter

log = logging.getLogger(__name__)

ShapeKey = tuple[int, int]  # (vision depth, prompt tokens): bundles of one shape share a forward pass


@dataclass(frozen=True)
class LabelInfo:
    name: str
    prompt: str
    unsafe: bool
    threshold: float
    openai_category: str | None = None  # the OpenAI moderation category this label also reports


@dataclass(frozen=True)
class DomainEntry:
    """One loaded bundle: what the API reports, plus where its tensors sit in the snapshot."""

    domain: str
    version: str
    group: dict[str, Any]
    labels: tuple[LabelInfo, ...]
    metrics: dict[str, Any]
    sha256: str
    created_at: str
    loaded_at: str
    prompt: dict[str, int | float]  # depth, group / private tokens, optional cache_weight
    shape: ShapeKey
    vision: Tensor  # (depth_v, n, Wv) on device, model dtype
    bank: DomainBank  # label / negative embeddings, scope model and rule, float32 on device
    rule: DecisionRule
    decision: dict[str, Any]  # the manifest's decision section ({} for bundles from before calibration)
    vision_row: int = -1  # index into snapshot.vision_banks[shape]
    text_row: int = -1  # index into snapshot.banks

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]


@dataclass(frozen=True)
class Snapshot:
    generation: int
    domains: dict[str, DomainEntry]
    vision_banks: dict[ShapeKey, Tensor]  # shape -> (T_shape, depth_v, n, Wv)
    banks: Banks | None  # scoring banks, one row per domain (sorted names)
    router: DomainRouter | None = None  # routes images sent without a domain; tensors on the model's device

    def known(self) -> list[str]:
        return sorted(self.domains)

    @property
    def routable(self) -> bool:
        """Whether an image sent without a domain can be routed to a served one."""
        return self.router is not None and bool(set(self.router.manifest.domains) & set(self.domains))


@dataclass
class ReloadReport:
    generation: int = 0
    loaded: list[dict[str, str]] = field(default_factory=list)  # new or changed versions
    unchanged: list[dict[str, str]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)  # domain, version, kind, message

    @property
    def ok(self) -> bool:
        return not self.refused


def build_snapshot(generation: int, entries: dict[str, DomainEntry], device: torch.device,
                   router: DomainRouter | None = None) -> Snapshot:
    """Place entries into fresh banks (new rows), leaving the entries of older snapshots untouched."""
    names = sorted(entries)
    if not names:
        return Snapshot(generation, {}, {}, None, router)
    by_shape: dict[ShapeKey, list[str]] = {}
    for name in names:
        by_shape.setdefault(entries[name].shape, []).append(name)
    vision_row = {m: row for members in by_shape.values() for row, m in enumerate(members)}
    banks = {shape: torch.stack([entries[m].vision for m in members])  # (T_shape, depth, n, Wv)
             for shape, members in by_shape.items()}
    scoring = Banks.stack([entries[n].bank for n in names], device=device)
    placed = {n: replace(entries[n], vision_row=vision_row[n], text_row=row) for row, n in enumerate(names)}
    return Snapshot(generation, placed, banks, scoring, router)


class BundleRegistry:
    """Loads every domain's CURRENT bundle and serves them as an atomically swapped Snapshot."""

    def __init__(self, clip: LoadedCLIP, prompted: PromptedCLIP, store_dir: Path | str):
        self.clip = clip
        self.prompted = prompted
        self.store = PromptStore(store_dir)
        self.device = next(prompted.clip.parameters()).device
        self._lock = threading.Lock()  # one reload at a time
        self._snapshot = Snapshot(0, {}, {}, None)
        self._warned_legacy: set[str] = set()
        self.last_report = ReloadReport()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot  # a single attribute read: atomic

    def _entry(self, bundle: Bundle) -> DomainEntry:
        m = bundle.manifest
        vision = bundle.vision_prompts().to(self.device, self.prompted.dtype)  # (depth_v, n, Wv)
        n = vision.shape[1]
        bank, rule = bundle_bank(bundle, self.prompted, self.clip.tokenizer, self.device)
        if not m.decision and m.domain not in self._warned_legacy:
            self._warned_legacy.add(m.domain)
            log.warning("%s@%s has no calibrated decision rule (written before schema 2): serving it with the "
                        "old rule (closed-set softmax vs thresholds, everything in scope)", m.domain, m.version)
        if m.decision and any(lab.unsafe for lab in m.labels) and not rule.can_flag:
            log.warning("%s@%s cannot flag any image: %s. Its answers are never flagged; retrain or recalibrate it "
                        "with more images", m.domain, m.version,
                        m.decision.get("cannot_flag_reason") or "every unsafe threshold is above 1")
        return DomainEntry(
            domain=m.domain, version=m.version, group=dict(m.group),
            labels=tuple(LabelInfo(lab.name, lab.prompt, bool(lab.unsafe), float(lab.threshold), lab.openai_category)
                         for lab in m.labels),
            metrics=dict(m.metrics), sha256=m.sha256, created_at=m.created_at,
            loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
            prompt=dict(m.prompt), shape=(int(vision.shape[0]), int(n)), vision=vision,
            bank=bank, rule=rule, decision=dict(m.decision),
        )

    def reload(self) -> ReloadReport:
        """Rescan the store; load changed CURRENT versions; swap one new snapshot in.

        Domains whose bundle is refused, or that vanished from disk, keep their previous
        version (reported under `refused`): moderation coverage is never dropped silently.
        """
        with self._lock:
            old = self._snapshot
            report = ReloadReport(generation=old.generation + 1)
            entries: dict[str, DomainEntry] = {}
            on_disk = self.store.domains()
            if not self.store.root.is_dir():
                report.refused.append({"domain": "*", "version": "", "kind": "missing",
                                       "message": f"store directory {self.store.root} does not exist"})
            for domain in on_disk:
                prev = old.domains.get(domain)
                try:
                    version = self.store.current_version(domain)
                except OSError as e:
                    version = None
                    err: Exception | None = e
                else:
                    err = None
                if prev is not None and version == prev.version:  # versions are immutable
                    entries[domain] = prev
                    report.unchanged.append({"domain": domain, "version": prev.version})
                    continue
                try:
                    if err is not None:
                        raise err
                    bundle = self.store.load_current(domain, base=self.clip.info)
                    if bundle.domain != domain:
                        raise BundleError("manifest", domain, f"bundle is for domain {bundle.domain!r}, "
                                                              f"stored under {domain!r}")
                    entries[domain] = self._entry(bundle)
                    report.loaded.append({"domain": domain, "version": bundle.version,
                                          "previous": prev.version if prev else ""})
                except Exception as e:  # BundleError, OSError, ValueError from a hostile store
                    kind = getattr(e, "kind", type(e).__name__)
                    report.refused.append({"domain": domain, "version": version or "", "kind": kind,
                                           "message": str(e)})
                    log.error("refused bundle %s@%s (%s): %s%s", domain, version, kind, e,
                              f"; still serving {prev.version}" if prev else "")
                    if prev is not None:
                        entries[domain] = prev
            for domain, prev in old.domains.items():
                if domain not in entries:
                    entries[domain] = prev
                    report.refused.append({"domain": domain, "version": prev.version, "kind": "missing",
                                           "message": "no bundle on disk any more; still serving "
                                                      f"{prev.version}"})
            router = self._reload_router(old.router, report)
            if report.loaded or not old.domains:
                self._snapshot = build_snapshot(report.generation, entries, self.device, router)
            else:
                report.generation = old.generation
            self.last_report = report
            log.info("reload generation %d: loaded %s, unchanged %d, refused %s", report.generation,
                     [f"{x['domain']}@{x['version']}" for x in report.loaded], len(report.unchanged),
                     [f"{x['domain']}:{x['kind']}" for x in report.refused])
            return report

    def _reload_router(self, prev: DomainRouter | None, report: ReloadReport) -> DomainRouter | None:
        """The store's current router (validated against the base model); a refused one keeps `prev`."""
        try:
            version = self.store.router_version()
            if version is None or (prev is not None and version == prev.version):
                if version is None and prev is not None:
                    report.refused.append({"domain": ROUTER_DIR, "version": prev.version, "kind": "missing",
                                           "message": f"no router on disk any more; still serving {prev.version}"})
                else:
                    report.unchanged += [{"domain": ROUTER_DIR, "version": prev.version}] if prev else []
                return prev
            router = self.store.load_router(self.clip.info).to(self.device)
        except Exception as e:  # BundleError, OSError from a hostile store: keep routing with the old one
            kind = getattr(e, "kind", type(e).__name__)
            report.refused.append({"domain": ROUTER_DIR, "version": "", "kind": kind, "message": str(e)})
            log.error("refused domain router (%s): %s%s", kind, e, f"; still serving {prev.version}" if prev else "")
            return prev
        report.loaded.append({"domain": ROUTER_DIR, "version": router.version,
                              "previous": prev.version if prev else ""})
        return router

    def signature(self) -> dict[str, str | None]:
        """Domain (and `_router`) -> CURRENT version on disk (cheap; for polling)."""
        try:
            sig = {d: self.store.current_version(d) for d in self.store.domains()}
            router = self.store.router_version()
        except OSError:
            return {}
        return {**sig, ROUTER_DIR: router} if router else sig

    def serving(self) -> dict[str, str]:
        """Domain (and `_router`) -> the version being served, comparable with `signature()`."""
        snap = self._snapshot
        out = {d: e.version for d, e in snap.domains.items()}
        return {**out, ROUTER_DIR: snap.router.version} if snap.router else out

