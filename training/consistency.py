"""PromptSRC's consistency loss: the pull of the prompted CLIP towards the frozen one while training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from promptclip import MultiTaskCLIP
from promptclip.decisions import label_cosines
from promptclip.multitask import stack_padded

from .config import TrainConfig


@dataclass
class Consistency:
    """PromptSRC's self-regulating consistency loss: keep the prompted CLIP near the frozen one.

    Few shots pull prompts towards features that fit them and away from what CLIP already knows
    (photo accuracy fell below zero-shot). Three terms (Khattak et al., 2023): the mean L1
    distance of prompted to frozen image features and of prompted to frozen label features, and
    KL(zero-shot logits || prompted logits) per sample.
    """

    text0: Tensor  # (T, Cmax, E) frozen label features per task, zero-padded
    image: float
    text: float
    kl: float

    @classmethod
    @torch.no_grad()
    def build(cls, model: MultiTaskCLIP, cfg: TrainConfig) -> Consistency | None:
        if not (cfg.consistency_image or cfg.consistency_text or cfg.consistency_kl):
            return None
        n = model.prompts.config.tokens
        text0 = stack_padded([model.encoder.encode_text(_strip_slots(model.label_tokens(t), n)) for t in model.tasks])
        return cls(text0, cfg.consistency_image, cfg.consistency_text, cfg.consistency_kl)

    def loss(self, model: MultiTaskCLIP, images: Tensor, task_idx: Tensor, logits: Tensor, img: Tensor,
             text: Tensor, present: list[int]) -> Tensor:
        """`images`: what the prompted pass read (`MultiTaskCLIP.forward(..., return_features=True)`'s last)."""
        with torch.no_grad():
            img0 = model.encoder.encode_image(images)
            text0 = self.text0[task_idx]  # (B, Cmax, E)
            counts = torch.tensor(model.num_labels, device=task_idx.device)[task_idx]
            zs = model.encoder.logit_scale * label_cosines(img0, text0, counts)
        valid = torch.isfinite(zs)
        log_p = F.log_softmax(logits.masked_fill(~valid, -1e4), -1)
        log_q = F.log_softmax(zs.masked_fill(~valid, -1e4), -1)
        kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
        return (self.image * F.l1_loss(img, img0.to(img.dtype))
                + self.text * F.l1_loss(text, self.text0[present].to(text.dtype)) + self.kl * kl)


def _strip_slots(tokens: Tensor, n: int) -> Tensor:
    """Label tokens without the `n` prompt placeholder slots after SOT (what bare CLIP reads)."""
    return torch.cat([tokens[:, :1], tokens[:, 1 + n:], tokens.new_zeros(tokens.shape[0], n)], 1)
