"""Deep-prompted forward passes through a frozen open_clip CLIP.

We never fork open_clip: we call its embedding, block and pooling modules and run the block
loop ourselves so that prompt tokens can be written in before every block.

Prompts are given per sample, already gathered: a tensor (B, depth, n, width). Layer k's
prompts overwrite the prompt slots before block k (k < depth); from `depth` on, the slots
carry what the previous block produced, as in VPT-deep / MaPLe. The slots are written into
one token buffer allocated at layer 0 instead of concatenating the sequence at every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .towers import TextTower, VisionTower, vision_tower


def run_blocks(blocks: Sequence[nn.Module], x: Tensor, prompts: Tensor | None, slot: int,
               taps: list[Tensor] | None = None, token_means: list[Tensor] | None = None,
               **block_kwargs: Any) -> Tensor:
    """Run `blocks` over x, writing layer k's prompts into the slots before block k (k < depth).

    Args:
        blocks: the tower's transformer blocks, each called as `blk(x, **block_kwargs)`.
        x: (B, L, W) token buffer whose positions slot..slot+n-1 are the prompt slots.
        prompts: (B, depth, n, W) or None: then x runs as it is (bare CLIP).
        slot: index of the first prompt slot.
        taps: if given, collects the RMS of the stream entering each block (a 0-d tensor each).
        token_means: if given, collects after each block the mean of the original tokens (those
            before `slot`), (B, W) each: the layer features the scope model reads.

    Returns:
        (B, L, W) after the last block.
    """
    n = 0 if prompts is None else prompts.shape[2]
    depth = 0 if prompts is None else prompts.shape[1]
    for k, blk in enumerate(blocks):
        if n and k < depth:
            x[:, slot:slot + n] = prompts[:, k]  # written in place: no new sequence per layer
        if taps is not None:
            taps.append(x.float().pow(2).mean().sqrt())
        x = blk(x, **block_kwargs)
        if token_means is not None:
            token_means.append(x[:, :slot].mean(1))
    return x


class PromptedCLIP(nn.Module):
    """A frozen open_clip CLIP whose two towers accept deep prompt tokens.

    The wrapped CLIP is frozen (no grad) and stays in eval mode even when this module is
    put in train mode; only prompts passed to the encode methods can receive gradients.

    Raises:
        ValueError: a tower that cannot take prompts exactly (convolutional, hybrid, RoPE
            variants other than timm's concatenated 2-D RoPE, HF text encoders). The message
            names the tower and lists the supported ones (see `promptclip.towers`).
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        clip.requires_grad_(False)
        clip.eval()
        self.vision: VisionTower = vision_tower(clip.visual)
        self.text = TextTower(clip)
        self.vision_layers = len(self.vision.blocks)
        self.vision_width = self.vision.width
        self.text_layers = len(self.text.blocks)
        self.text_width = self.text.width

    def train(self, mode: bool = True) -> PromptedCLIP:
        super().train(mode)
        self.clip.eval()  # frozen backbone: no dropout / patch dropout, ever
        return self

    @property
    def family(self) -> str:
        """The image tower's family ('open_clip-vit', 'timm-vit', 'timm-eva'), recorded in bundles."""
        return self.vision.family

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.patch_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vision.patch_weight.device

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned temperature, exp(logit_scale): the factor on cosine similarities."""
        return self.clip.logit_scale.exp()

    # ---------------------------------------------------------------- image tower
    def encode_image(self, images: Tensor, prompts: Tensor | None = None, normalize: bool = True,
                     taps: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Image embeddings with per-sample deep prompts.

        Prompt tokens follow the L0 original tokens (CLS / prefix tokens and patches) and are
        dropped before the tower's pooling, so its pooling head only ever sees the originals.

        Args:
            images: (B, 3, H, W) preprocessed images.
            prompts: (B, depth, n, Wv) per-sample prompt tokens, or None / n == 0 for bare CLIP.
            normalize: L2-normalise the output.
            taps: also return the mean of the original tokens after every block (the scope
                model's layer features, `promptclip.scope`), from the same forward pass.

        Returns:
            (B, E) embeddings; with `taps`, also (B, layers, Wv) layer means.
        """
        if prompts is not None and prompts.shape[2] == 0:
            prompts = None
        n = 0 if prompts is None else prompts.shape[2]
        x, kwargs = self.vision.embed(images.to(self.dtype), n)  # (B, L0, Wv)
        L0 = x.shape[1]
        if prompts is not None:
            prompts = prompts.to(x.dtype)
            x = torch.cat([x, prompts[:, 0]], dim=1)  # (B, L0 + n, Wv): the one allocation
        means: list[Tensor] | None = [] if taps else None
        x = run_blocks(self.vision.blocks, x, prompts, L0, token_means=means, **kwargs)
        pooled = self.vision.head(x[:, :L0])  # prompts never reach pooling
        out = F.normalize(pooled, dim=-1) if normalize else pooled
        return (out, torch.stack(means, 1)) if taps else out

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
        if prompts is not None and prompts.shape[2] == 0:
            prompts = None
        n = 0 if prompts is None else prompts.shape[2]
        pool_idx = self.text.pool_index(tokens, n)
        if self.text.can_trim:
            tokens = tokens[:, :int(pool_idx.max()) + 1]
        x, mask = self.text.embed(tokens, self.dtype)  # (N, L, Wt)
        x = run_blocks(self.text.blocks, x, None if prompts is None else prompts.to(x.dtype), 1, attn_mask=mask)
        pooled = self.text.head(x, pool_idx)
        return F.normalize(pooled, dim=-1) if normalize else pooled


def insert_placeholders(tokens: Tensor, n: int, placeholder_id: int) -> Tensor:
    """Shift token ids right by `n` after the first position (SOT) and fill the gap with `placeholder_id`.

    (N, ctx) -> (N, ctx). The shift drops the last n positions, so every row must end in at
    least n + 1 copies of its last id (padding: 0 for CLIP's tokenizer, the pad / EOS id for
    SentencePiece ones such as SigLIP's); otherwise the label prompt is too long.
    """
    if n == 0:
        return tokens
    N, ctx = tokens.shape
    if n + 1 > ctx or not bool((tokens[:, ctx - n - 1:] == tokens[:, -1:]).all()):
        raise ValueError(f"label prompt too long: {n} prompt slots need {n + 1} padding positions at the end "
                         f"of the {ctx}-token context")
    fill = torch.full((N, n), placeholder_id, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([tokens[:, :1], fill, tokens[:, 1:ctx - n]], dim=1)


def measure_stream_rms(encoder: PromptedCLIP, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """RMS of the frozen residual stream entering each block, per tower: ((Lv,), (Lt,)).

    Prompts initialised at each layer's own scale keep the frozen model in its operating
    range; one small scale for all layers disturbs the shallow text layers and is too weak deep.
    """
    rms_v: list[Tensor] = []
    rms_t: list[Tensor] = []
    with torch.no_grad():
        x, kwargs = encoder.vision.embed(images.to(encoder.dtype), 0)
        run_blocks(encoder.vision.blocks, x, None, 0, taps=rms_v, **kwargs)
        text = encoder.text
        if text.can_trim:
            tokens = tokens[:, :int(text.pool_index(tokens, 0).max()) + 1]
        x, mask = text.embed(tokens, encoder.dtype)
        run_blocks(text.blocks, x, None, 1, taps=rms_t, attn_mask=mask)
    return torch.stack(rms_v).cpu(), torch.stack(rms_t).cpu()
