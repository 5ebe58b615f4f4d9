"""The one forward-and-decide path: images + per-row prompts + rows into the banks -> decisions.

The service's engine (mixed domains, micro-batches), the backlog scorer (one domain) and
export (one domain's held-out images) all run their images through a `ModelRunner`, so a
decision is computed the same way wherever it is made:

    runner = ModelRunner(PromptedCLIP(clip.model))
    decided = runner.decide(images, prompts, rows, banks)   # promptclip.Decisions
    rows_json = decided.answers(banks)

`encode` is the seam for a faster image tower (promptclip.ImageRunner: a CUDA graph per batch
bucket); `bare` is the frozen tower without prompts, whose features the domain router and a
bundle's zero-shot guard read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .decisions import Banks, BatchScores, Decisions, decide_batch, score_batch
from .lowpass import lowpass_rows
from .prompted import PromptedCLIP

EncodeFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # -> (B, E) normalised, (B, layers, Wv) layer taps


class ModelRunner:
    """Holds the prompted tower and its encoder; every method runs under `torch.inference_mode`."""

    def __init__(self, encoder: PromptedCLIP, encode: EncodeFn | None = None):
        self.encoder = encoder
        self.encode = encode or functools.partial(encoder.encode_image, taps=True)
        self.logit_scale = float(encoder.logit_scale)
        p = next(encoder.clip.parameters())
        self.device, self.dtype = p.device, p.dtype

    @torch.inference_mode()
    def bare(self, images: Tensor) -> Tensor:
        """(B, E) normalised features of the frozen tower without prompts (what the domain router reads);
        (0, E) for an empty batch (no row of it is guarded or routed)."""
        if not len(images):
            return torch.zeros(0, self.encoder.text.embed_dim, device=self.device)
        return self.encoder.clip.encode_image(images.to(self.device, self.dtype), normalize=True).float()

    @torch.inference_mode()
    def features(self, images: Tensor, prompts: Tensor) -> tuple[Tensor, Tensor]:
        """(B, E) normalised embeddings and (B, layers, Wv) layer taps of `images` under per-row `prompts`."""
        return self.encode(images, prompts)

    @torch.inference_mode()
    def prompted(self, images: Tensor, prompts: Tensor, lowpass: Sequence[float]) -> tuple[Tensor, Tensor]:
        """`features` of the images as each row's bundle reads them: row b low-passed by `lowpass[b]` pixels
        first (`promptclip.lowpass`; 0: as it is; `Banks.lowpass_of`)."""
        return self.features(lowpass_rows(images, lowpass), prompts)

    @torch.inference_mode()
    def scores(self, feats: Tensor, taps: Tensor | None, rows: Tensor, banks: Banks,
               bare: Tensor | None = None) -> BatchScores:
        return score_batch(feats, rows, banks, self.logit_scale, taps, bare)

    def decide_features(self, feats: Tensor, taps: Tensor | None, rows: Tensor, banks: Banks, *,
                        bare: Tensor | None = None, review_out_of_scope: bool = False,
                        review_margin: float = 0.1) -> Decisions:
        """Decisions for already-encoded images (`rows` (B,) into `banks`; `bare` where a domain is guarded)."""
        return decide_features(feats, taps, rows, banks, self.logit_scale, bare=bare,
                               review_out_of_scope=review_out_of_scope, review_margin=review_margin)

    @torch.inference_mode()
    def decide(self, images: Tensor, prompts: Tensor, rows: Tensor, banks: Banks, *,
               review_out_of_scope: bool = False, review_margin: float = 0.1) -> Decisions:
        """Decisions for `images` (B, 3, H, W) under `prompts` (B, depth, n, Wv), row b scored in its
        domain `rows[b]` of `banks` (and low-passed first where its bundle asks); a second, bare pass of the
        unfiltered images only when some row's domain has a zero-shot guard."""
        rows_list = rows.tolist()
        feats, taps = self.prompted(images, prompts, banks.lowpass_of(rows_list))
        bare = self.bare(images) if banks.needs_bare(rows_list) else None
        return self.decide_features(feats, taps, rows, banks, bare=bare, review_out_of_scope=review_out_of_scope,
                                    review_margin=review_margin)


@torch.inference_mode()
def decide_features(feats: Tensor, taps: Tensor | None, rows: Tensor, banks: Banks, logit_scale: float, *,
                    bare: Tensor | None = None, review_out_of_scope: bool = False,
                    review_margin: float = 0.1) -> Decisions:
    """The batched score and decision of encoded images: the one rule, wherever features come from."""
    return decide_batch(score_batch(feats, rows, banks, logit_scale, taps, bare), rows, banks,
                        review_out_of_scope=review_out_of_scope, review_margin=review_margin)
