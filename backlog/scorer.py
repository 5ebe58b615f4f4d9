"""CLIP + one domain's bundle, loaded once: encoded images -> decisions -> output rows.

Both engines score through a `Scorer` (the local engine holds one; each Ray actor holds one),
and every decision comes from `promptclip.ModelRunner`, the path the service's engine runs: the
image tower with the bundle's vision prompts, then the batched score and decision against the
bank `promptclip.bundle_bank` built.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pyarrow as pa
import torch
from torch import Tensor

from promptclip import Banks, PromptedCLIP, PromptStore, bundle_bank, load_clip
from promptclip.images import decode_rgb
from promptclip.runner import ModelRunner

from .config import ScoreConfig
from .inputs import Item

log = logging.getLogger(__name__)

Outcome = dict | str  # a decision (promptclip.Decisions.answers) or the error message of an image that failed


class Scorer:
    """Loads the frozen CLIP and the domain's CURRENT bundle; encodes its labels once."""

    def __init__(self, cfg: ScoreConfig, device: str | None = None):
        spec = cfg.model_spec(device)
        if threads := cfg.torch_threads(spec.device):
            torch.set_num_threads(threads)
        self.cfg = cfg
        self.clip = load_clip(spec)
        self.encoder = PromptedCLIP(self.clip.model)
        self.runner = ModelRunner(self.encoder)
        self.device = torch.device(spec.device)
        bundle = PromptStore(cfg.store).load_current(cfg.domain, base=self.clip.info)
        bank, self.rule = bundle_bank(bundle, self.encoder, self.clip.tokenizer, self.device)
        self.banks = Banks.stack([bank], self.device)
        self.prompts = bundle.vision_prompts().to(self.device, self.encoder.dtype)  # (depth, n, Wv)
        self.version, self.sha256 = bundle.version, bundle.manifest.sha256
        self.labels = [lab.name for lab in bundle.manifest.labels]
        self.schema = output_schema(self.labels)
        log.info("scorer: %s@%s (%d labels) on %s, model %s", cfg.domain, self.version, len(self.labels),
                 self.device, spec.model)

    def pixels(self, data: bytes | Exception) -> Tensor:
        """(3, H, W) model input; ValueError / OSError saying why an image cannot be scored."""
        if isinstance(data, Exception):
            raise data
        return self.clip.preprocess(decode_rgb(data, self.cfg.max_image_pixels))

    def decide(self, pixels: Sequence[Tensor]) -> list[dict]:
        """One decision per image of a batch (the service engine's runner, one domain)."""
        images = torch.stack(list(pixels)).to(self.device)  # (B, 3, H, W)
        prompts = self.prompts.expand(len(pixels), *self.prompts.shape)  # (B, depth, n, Wv)
        rows = torch.zeros(len(pixels), dtype=torch.long, device=self.device)  # every image: this domain
        return self.runner.decide(images, prompts, rows, self.banks,
                                  review_out_of_scope=self.cfg.review_out_of_scope).answers(self.banks)

    def table(self, items: Sequence[Item], outcomes: Sequence[Outcome]) -> pa.Table:
        """Output rows of `items` (listing order kept) as a table of `self.schema`."""
        cols: dict[str, list] = {name: [] for name in self.schema.names}
        for it, out in zip(items, outcomes, strict=True):
            for name, value in self._row(it, out).items():
                cols[name].append(value)
        return pa.Table.from_pydict(cols, schema=self.schema)

    def _row(self, it: Item, out: Outcome) -> dict:
        row = {"index": it.index, "id": it.id, "path": it.path, "domain": self.cfg.domain,
               "bundle_version": self.version, "error": out if isinstance(out, str) else None}
        if isinstance(out, str):
            row.update({k: None for k in DECISION_FIELDS})
            row.update({f"{kind}.{lab}": None for lab in self.labels for kind in PER_LABEL})
            return row
        scope = out["scope_score"]
        row.update(top_label=out["top_label"], out_of_scope=not out["in_scope"],
                   scope_score=None if math.isinf(scope) else scope, label_mass=out["label_mass"],
                   flagged=out["flagged"], needs_review=out["needs_review"])
        for lab in out["labels"]:
            for kind in PER_LABEL:
                row[f"{kind}.{lab['label']}"] = lab[kind]
        return row


DECISION_FIELDS = ("top_label", "out_of_scope", "scope_score", "label_mass", "flagged", "needs_review")
PER_LABEL = ("score", "probability")  # per-label columns "score.<label>", "probability.<label>"


def output_schema(labels: Sequence[str]) -> pa.Schema:
    """One row per image: where it came from, the bundle, the decision, and per-label values."""
    fields = [("index", pa.int64()), ("id", pa.string()), ("path", pa.string()), ("domain", pa.string()),
              ("bundle_version", pa.string()), ("error", pa.string()), ("top_label", pa.string()),
              ("out_of_scope", pa.bool_()), ("scope_score", pa.float64()), ("label_mass", pa.float64()),
              ("flagged", pa.bool_()), ("needs_review", pa.bool_())]
    fields += [(f"{kind}.{lab}", pa.float64()) for lab in labels for kind in PER_LABEL]
    return pa.schema(fields)
