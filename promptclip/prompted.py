"""Deep-prompted forward passes through a frozen open_clip CLIP.

We never fork open_clip: we call its embedding, block and pooling modules and run the block
loop ourselves so that prompt tokens can be written in before every block.

Prompts are given per sample, already gathered: a tensor (B, depth, n, width). Layer k's
prompts overwrite the prompt slots before block k (k < depth); from `depth` on, the slots
carry what the previous block produced, as in VPT-deep / MaPLe. The slots are written into
one token buffer allocated at layer 0 instead of concatenating the sequence at every layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PromptedCLIP(nn.Module):
    """A frozen open_clip CLIP whose two towers accept deep prompt tokens.

    The wrapped CLIP is frozen (no grad) and stays in eval mode even when this module is
    put in train mode; only prompts passed to the encode methods can receive gradients.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        clip.requires_grad_(False)
        clip.eval()
        visual = clip.visual
        self._text = getattr(clip, "text", clip)  # CustomTextCLIP keeps its text tower in .text
        if not getattr(visual.transformer, "batch_first", True) or not getattr(
            self._text.transformer, "batch_first", True
        ):
            raise ValueError("PromptedCLIP needs open_clip transformers with batch_first=True")
        self.vision_layers = len(visual.transformer.resblocks)
        self.vision_width = visual.transformer.width
        self.text_layers = len(self._text.transformer.resblocks)
        self.text_width = self._text.transformer.width
        self.text_pool = getattr(self._text, "text_pool_type", getattr(self._text, "pool_type", "argmax"))
        if self.text_pool not in ("argmax", "eos", "last"):
            raise ValueError(f"unsupported text pooling {self.text_pool!r} (argmax, eos, last are)")

    def train(self, mode: bool = True) -> PromptedCLIP:
        super().train(mode)
        self.clip.eval()  # frozen backbone: no dropout / patch dropout, ever
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.visual.conv1.weight.dtype

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned temperature, exp(logit_scale): the factor on cosine similarities."""
        return self.clip.logit_scale.exp()

    # ---------------------------------------------------------------- image tower
    def encode_image(self, images: Tensor, prompts: Tensor | None = None, normalize: bool = True) -> Tensor:
        """Image embeddings with per-sample deep prompts.

        Args:
            images: (B, 3, H, W) preprocessed images.
            prompts: (B, depth, n, Wv) per-sample prompt tokens, or None / n == 0 for bare CLIP.
            normalize: L2-normalise the output.

        Returns:
            (B, E) embeddings.
        """
        visual = self.clip.visual
        x = visual._embeds(images.to(self.dtype))  # (B, 1+P, Wv)
        blocks = visual.transformer.resblocks
        if prompts is None or prompts.shape[2] == 0:
            for blk in blocks:
                x = blk(x)
        else:
            L0, depth = x.shape[1], prompts.shape[1]
            prompts = prompts.to(x.dtype)
            x = torch.cat([x, prompts[:, 0]], dim=1)  # (B, L0+n, Wv): the one allocation
            for k, blk in enumerate(blocks):
                if 0 < k < depth:
                    x[:, L0:] = prompts[:, k]  # overwrite the prompt slots in place
                x = blk(x)
            x = x[:, :L0]  # prompts never reach pooling
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return F.normalize(pooled, dim=-1) if normalize else pooled

    # ----------------------------------------------------------------- text tower
    def encode_text(self, tokens: Tensor, prompts: Tensor | None = None, normalize: bool = True) -> Tensor:
        """Text embeddings with deep prompts in the placeholder slots right after SOT.

        Args:
            tokens: (N, ctx) token ids; positions 1..n hold placeholders when prompts are given
                (see `insert_placeholders`).
            prompts: (N, depth, n, Wt) per-row prompt tokens, or None / n == 0 for bare CLIP.
            normalize: L2-normalise the output.

        Returns:
            (N, E) embeddings.
        """
        t = self._text
        cast = self.dtype
        if self.text_pool in ("argmax", "eos"):
            pool_idx = tokens.argmax(dim=-1) if self.text_pool == "argmax" else (
                tokens == getattr(t, "text_eos_id", getattr(t, "eos_id", None))).int().argmax(dim=-1)
            # Under the causal mask nothing after the last pooled position can change the output,
            # so stop the sequence there: identical result, far less work on 77-token contexts.
            L = int(pool_idx.max()) + 1
        else:
            pool_idx, L = None, tokens.shape[1]
        tokens = tokens[:, :L]
        x = t.token_embedding(tokens).to(cast) + t.positional_embedding[:L].to(cast)  # (N, L, Wt)
        mask = t.attn_mask[:L, :L] if t.attn_mask is not None else None
        n = 0 if prompts is None else prompts.shape[2]
        if n:
            prompts = prompts.to(cast)
            depth = prompts.shape[1]
        for k, blk in enumerate(t.transformer.resblocks):
            if n and k < depth:
                x[:, 1:1 + n] = prompts[:, k]
            x = blk(x, attn_mask=mask)
        x = t.ln_final(x)
        pooled = x[:, -1] if pool_idx is None else x[torch.arange(x.shape[0], device=x.device), pool_idx]
        proj = t.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return F.normalize(pooled, dim=-1) if normalize else pooled


def insert_placeholders(tokens: Tensor, n: int, placeholder_id: int) -> Tensor:
    """Shift token ids right by `n` after SOT and fill the gap with `placeholder_id`.

    (N, ctx) -> (N, ctx). The last real token (EOT) is kept if the shift would push it out.
    """
    if n == 0:
        return tokens
    N, ctx = tokens.shape
    lengths = (tokens != 0).sum(dim=1)
    if int(lengths.max()) + n > ctx:
        raise ValueError(f"label prompt too long: {int(lengths.max())} tokens + {n} prompt slots > context {ctx}")
    fill = torch.full((N, n), placeholder_id, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([tokens[:, :1], fill, tokens[:, 1:ctx - n]], dim=1)


def measure_stream_rms(encoder: PromptedCLIP, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """RMS of the frozen residual stream entering each block, per tower: ((Lv,), (Lt,)).

    Prompts initialised at each layer's own scale keep the frozen model in its operating
    range; one small scale for all layers disturbs the shallow text layers and is too weak deep.
    """
    rms_v, rms_t = [], []
    with torch.no_grad():
        visual = encoder.clip.visual
        x = visual._embeds(images.to(encoder.dtype))
        for blk in visual.transformer.resblocks:
            rms_v.append(x.float().pow(2).mean().sqrt())
            x = blk(x)
        t = encoder._text
        L = int(tokens.argmax(dim=-1).max()) + 1
        x = t.token_embedding(tokens[:, :L]).to(encoder.dtype) + t.positional_embedding[:L].to(encoder.dtype)
        mask = t.attn_mask[:L, :L] if t.attn_mask is not None else None
        for blk in t.transformer.resblocks:
            rms_t.append(x.float().pow(2).mean().sqrt())
            x = blk(x, attn_mask=mask)
    return torch.stack(rms_v).cpu(), torch.stack(rms_t).cpu()
