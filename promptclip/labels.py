"""Labels added to or removed from a published bundle without retraining (DESIGN §6 admin routes).

The new version keeps the prompt tensors, the decision rule and the scope model; only the label
list changes. An added label carries no calibration, so `promptclip.decisions` gives it the
closed-set softmax as its probability and reports it `calibrated: false`. A removed label's
calibration rows go with it and the remaining rows are re-indexed, so `calibration.labels` stays valid.
With a label cache (`labels.cache`), an added label gets a zero row (no shots: its text feature
alone, see `promptclip.label_embeddings`) and a removed label's row goes.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime

import torch

from .bundle import Bundle, Label, stored_form
from .loading import BaseModelInfo
from .store import PromptStore

LABEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
MAX_LABELS = 256  # per domain: every label costs a text feature per request row
OPENAI_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                     "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                     "sexual/minors", "violence", "violence/graphic")


class LabelEditError(ValueError):
    """A label change that cannot be made. `kind`: invalid_label, label_exists, unknown_label, too_few_labels,
    too_many_labels."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_label(label: Label) -> Label:
    """Refuse a label a pipeline could not use, saying what is accepted."""
    if not isinstance(label.name, str) or not LABEL_NAME.match(label.name):
        raise LabelEditError("invalid_label", f"label name {label.name!r} must match {LABEL_NAME.pattern}")
    if not isinstance(label.prompt, str) or not label.prompt.strip() or len(label.prompt) > 300:
        raise LabelEditError("invalid_label", "label prompt must be 1 to 300 characters of text fed to CLIP, "
                                              "e.g. 'a photo of a star.'")
    if not 0.0 < float(label.threshold) <= 1.0:
        raise LabelEditError("invalid_label", f"threshold {label.threshold} must be in (0, 1]")
    if label.openai_category is not None and label.openai_category not in OPENAI_CATEGORIES:
        raise LabelEditError("invalid_label", f"openai_category {label.openai_category!r} is not one of "
                                              f"{list(OPENAI_CATEGORIES)}")
    return label


def _edited(bundle: Bundle, labels: list[Label], tensors: dict, version: str, edit: dict) -> Bundle:
    m = copy.deepcopy(bundle.manifest)
    m.version, m.labels, m.created_at, m.sha256 = version, labels, "", ""
    edit = {**edit, "from_version": bundle.version, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    # the held-out rates were measured with the labels of the trained version, not these
    m.metrics = {**m.metrics, "label_edits": [*m.metrics.get("label_edits", []), edit]}
    return Bundle(m, stored_form(tensors))


def with_label(bundle: Bundle, label: Label, version: str) -> Bundle:
    """`bundle` plus one uncalibrated label, appended (calibration indices are unchanged)."""
    label = check_label(Label(label.name, label.prompt, bool(label.unsafe), float(label.threshold), None,
                              label.openai_category))
    names = [lab.name for lab in bundle.manifest.labels]
    if label.name in names:
        raise LabelEditError("label_exists", f"{bundle.domain} already has a label {label.name!r}; remove it first")
    if len(names) >= MAX_LABELS:
        raise LabelEditError("too_many_labels", f"{bundle.domain} has {len(names)} labels; the limit is {MAX_LABELS}")
    labels = [copy.deepcopy(lab) for lab in bundle.manifest.labels] + [label]
    tensors = dict(bundle.tensors)
    if "labels.cache" in tensors:
        cache = tensors["labels.cache"]
        tensors["labels.cache"] = torch.cat([cache, cache.new_zeros(1, cache.shape[1])])
    return _edited(bundle, labels, tensors, version, {"op": "add", "label": label.name})


def without_label(bundle: Bundle, name: str, version: str) -> Bundle:
    """`bundle` less the label `name`; its calibration rows are dropped and later indices shift down.

    The scope model is a Gaussian over the domain's images, not per label: it is kept as it is."""
    names = [lab.name for lab in bundle.manifest.labels]
    if name not in names:
        raise LabelEditError("unknown_label", f"{bundle.domain} has no label {name!r}; labels: {names}")
    if len(names) <= 2:
        raise LabelEditError("too_few_labels", f"{bundle.domain} would keep {len(names) - 1} label; a domain "
                                               "needs at least 2")
    k = names.index(name)
    tensors = dict(bundle.tensors)
    if "calibration.labels" in tensors:
        idx = tensors["calibration.labels"].long()
        keep = idx != k
        for part in ("features", "scope"):
            tensors[f"calibration.{part}"] = bundle.tensors[f"calibration.{part}"][keep]
        tensors["calibration.labels"] = (idx[keep] - (idx[keep] > k).long()).to(bundle.tensors["calibration.labels"].dtype)
    if "labels.cache" in tensors:
        tensors["labels.cache"] = torch.cat([tensors["labels.cache"][:k], tensors["labels.cache"][k + 1:]])
    labels = [copy.deepcopy(lab) for i, lab in enumerate(bundle.manifest.labels) if i != k]
    return _edited(bundle, labels, tensors, version, {"op": "remove", "label": name})


def publish_label_edit(store: PromptStore, domain: str, *, add: Label | None = None, remove: str | None = None,
                       base: BaseModelInfo | None = None) -> tuple[Bundle, str]:
    """Apply one edit to `domain`'s CURRENT bundle and publish it as the next version.

    Returns the published bundle and the version it replaced.
    """
    if (add is None) == (remove is None):
        raise ValueError("give exactly one of add= or remove=")
    current = store.load_current(domain, base)
    version = store.next_version(domain)
    bundle = with_label(current, add, version) if add is not None else without_label(current, remove, version)
    store.publish(bundle, base=base)
    return bundle, current.version
