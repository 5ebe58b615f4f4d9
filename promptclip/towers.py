"""The towers PromptedCLIP can run block by block, and a clear refusal for the others.

A tower adapter exposes open_clip's (or timm's) own pieces, never copies of them:

* `embed`: the tower's embedding step, exactly as its own forward runs it;
* `blocks`: the transformer blocks, called one by one with `block_kwargs`;
* `head`: everything after the last block (final norm, pooling, projection).

Deep prompts are extra tokens the adapters place where the tower's own pooling never looks:
after the original tokens of an image tower (dropped before `head`), right after SOT in a
text tower. Nothing else about the tower changes, so zero prompt tokens reproduce it exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import Tensor, nn

SUPPORTED_VISION = (
    "open_clip VisionTransformer (OpenAI / LAION ViTs, CoCa)",
    "open_clip TimmModel around a timm VisionTransformer with a plain patch embedding "
    "(SigLIP, SigLIP2: learned position embedding, prefix tokens, MAP head)",
    "open_clip TimmModel around a timm Eva with concatenated 2-D RoPE (EVA02, PE-Core)",
)
SUPPORTED_TEXT = ("open_clip's own text transformer (CLIP, CoCa, SigLIP text towers)",)


def _refuse(kind: str, name: str, why: str, supported: tuple[str, ...]) -> ValueError:
    return ValueError(f"{kind} tower {name} is not supported by PromptedCLIP: {why}. "
                      f"Supported {kind} towers: " + "; ".join(supported) + ".")


class VisionTower:
    """An image tower run block by block. Subclasses fill in embed / head."""

    family = ""  # recorded in bundles' base_model: a bundle trained for one family never loads into another

    def __init__(self, visual: nn.Module, blocks: nn.Module, width: int, patch_weight: Tensor):
        self.visual = visual
        self.blocks = list(blocks)
        self.width = int(width)
        self.patch_weight = patch_weight  # its dtype and device are the tower's

    def embed(self, images: Tensor, n: int) -> tuple[Tensor, dict[str, Any]]:
        """(B, 3, H, W) -> tokens (B, L0, W) and the keyword arguments every block takes
        when `n` prompt tokens follow the L0 original ones."""
        raise NotImplementedError

    def head(self, x: Tensor) -> Tensor:
        """(B, L0, W) original tokens after the last block -> (B, E) unnormalised embedding."""
        raise NotImplementedError


class OpenClipViT(VisionTower):
    """open_clip's VisionTransformer: `_embeds`, `transformer.resblocks`, `_pool` + `proj`."""

    family = "open_clip-vit"

    def __init__(self, visual: VisionTransformer):
        if not getattr(visual.transformer, "batch_first", True):
            raise _refuse("image", "VisionTransformer(batch_first=False)", "blocks must be batch-first",
                          SUPPORTED_VISION)
        super().__init__(visual, visual.transformer.resblocks, visual.transformer.width, visual.conv1.weight)

    def embed(self, images: Tensor, n: int) -> tuple[Tensor, dict[str, Any]]:
        return self.visual._embeds(images), {}

    def head(self, x: Tensor) -> Tensor:
        pooled, _ = self.visual._pool(x)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled


class TimmTrunk(VisionTower):
    """A tower over open_clip's TimmModel: the blocks, width and patch weights come from its timm trunk."""

    def __init__(self, visual: nn.Module):
        trunk = visual.trunk
        super().__init__(visual, trunk.blocks, trunk.embed_dim, trunk.patch_embed.proj.weight)


class TimmViT(TimmTrunk):
    """open_clip's TimmModel around a timm VisionTransformer (SigLIP / SigLIP2).

    The trunk's `_pos_embed` adds the learned position embedding and its prefix tokens; the
    MAP head (`attn_pool`) then sees only the original tokens, as in the trunk's own forward.
    """

    family = "timm-vit"

    def embed(self, images: Tensor, n: int) -> tuple[Tensor, dict[str, Any]]:
        t = self.visual.trunk
        return t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(images)))), {}

    def head(self, x: Tensor) -> Tensor:
        t = self.visual.trunk
        return self.visual.head(t.forward_head(t.norm(x)))


class TimmEva(TimmTrunk):
    """open_clip's TimmModel around a timm Eva with rotary position embedding (EVA02, PE-Core).

    RoPE rotates the patch tokens (those after the prefix tokens) by their grid position.
    Prompt tokens sit after the patches with the identity rotation (sin 0, cos 1): like the
    class token, they are outside the rotary positions, so the patches see the same rotations
    as without prompts.
    """

    family = "timm-eva"

    def embed(self, images: Tensor, n: int) -> tuple[Tensor, dict[str, Any]]:
        t = self.visual.trunk
        x, rope = t._pos_embed(t.patch_embed(images))  # (B, L0, W), (P, 2 * D) as [sin | cos]
        x = t.norm_pre(x)
        if rope is not None and n:
            sin, cos = rope.chunk(2, dim=-1)
            rope = torch.cat([rope, torch.cat([torch.zeros_like(sin[:n]), torch.ones_like(cos[:n])], -1)])
        return x, {"rope": rope}

    def head(self, x: Tensor) -> Tensor:
        t = self.visual.trunk
        return self.visual.head(t.forward_head(t.norm(x)))


def vision_tower(visual: nn.Module) -> VisionTower:
    """The adapter for `visual`, or a ValueError naming the tower and listing what is supported."""
    if isinstance(visual, VisionTransformer):
        return OpenClipViT(visual)
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        raise _refuse("image", type(visual).__name__, "it is not a transformer with token blocks "
                      "(convolutional towers have no tokens to prompt)", SUPPORTED_VISION)
    name = f"{type(visual).__name__}({type(trunk).__name__})"
    if len(getattr(visual, "head", ())) and "pool" in dict(visual.head.named_children()):
        raise _refuse("image", name, "its attention-pool head reads a 2-D feature map", SUPPORTED_VISION)
    from timm.layers import PatchEmbed
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

    if type(trunk) not in (TimmVisionTransformer, Eva):
        raise _refuse("image", name, "it is a convolutional or hybrid network, not a ViT with token blocks",
                      SUPPORTED_VISION)
    embed = getattr(trunk, "patch_embed", None)
    if not isinstance(embed, PatchEmbed):
        raise _refuse("image", name, f"its patch embedding is a convolutional stem ({type(embed).__name__})",
                      SUPPORTED_VISION)
    return TimmViT(visual) if type(trunk) is TimmVisionTransformer else _checked_eva(visual, name)


def _checked_eva(visual: nn.Module, name: str) -> TimmEva:
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat

    trunk = visual.trunk
    if trunk.rope is not None and (getattr(trunk, "rope_mixed", False) or type(trunk.rope) is not RotaryEmbeddingCat):
        raise _refuse("image", name, f"prompts cannot be placed outside its {type(trunk.rope).__name__} rotary "
                      "positions exactly", SUPPORTED_VISION)
    if getattr(trunk, "dynamic_img_size", False):
        raise _refuse("image", name, "dynamic image size", SUPPORTED_VISION)
    return TimmEva(visual)


class TextTower:
    """A text tower run block by block: open_clip's TextTransformer or CLIP's built-in one.

    Prompt slots are positions 1..n (right after SOT; for tokenizers without SOT, after the
    first token). The pooled position never falls on a slot.
    """

    def __init__(self, clip: nn.Module):
        text = getattr(clip, "text", clip)  # CustomTextCLIP / CoCa keep their text tower in .text
        self.module = text
        if isinstance(text, TextTransformer):
            self.pool_type, self.eos_id = text.pool_type, text.eos_id
            self.cls_emb, self.pad_mask = text.cls_emb is not None, text.use_pad_mask
        elif hasattr(text, "token_embedding") and hasattr(text, "transformer"):  # open_clip CLIP
            self.pool_type, self.eos_id = text.text_pool_type, getattr(text, "text_eos_id", None)
            self.cls_emb, self.pad_mask = False, False
        else:
            raise _refuse("text", type(text).__name__, "it is not open_clip's text transformer", SUPPORTED_TEXT)
        if self.cls_emb:
            self.pool_type = "last"  # open_clip: an appended CLS (CoCa) overrides pool_type
        if self.pool_type not in ("argmax", "eos", "last", "first"):
            raise _refuse("text", type(text).__name__, f"pooling {self.pool_type!r}", SUPPORTED_TEXT)
        if not getattr(text.transformer, "batch_first", True):
            raise _refuse("text", type(text).__name__, "blocks must be batch-first", SUPPORTED_TEXT)
        self.blocks = list(text.transformer.resblocks)
        self.width = int(text.transformer.width)
        proj = text.text_projection
        self.embed_dim = int(self.width if proj is None else
                             proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])
        self.causal = text.attn_mask is not None
        # Under a causal mask nothing after the pooled position reaches the output, so the
        # sequence can stop there: identical result, far less work on 77-token contexts.
        self.can_trim = self.causal and not self.cls_emb and not self.pad_mask and self.pool_type in ("argmax", "eos")

    def pool_index(self, tokens: Tensor, n: int) -> Tensor | None:
        """(N,) position each row is pooled at (None for 'last'); prompt slots 1..n never count."""
        if self.pool_type == "last":
            return None
        if self.pool_type == "first":
            return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        hits = tokens.clone() if self.pool_type == "argmax" else (tokens == self.eos_id).int()
        hits[:, 1:1 + n] = 0
        return hits.argmax(dim=-1)

    def embed(self, tokens: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """(N, L) ids -> (N, L', Wt) embeddings (L' = L + 1 with CoCa's CLS) and the attention mask."""
        t, L = self.module, tokens.shape[1]
        if isinstance(t, TextTransformer):
            x, mask = t._embeds(tokens)
        else:
            x = t.token_embedding(tokens).to(dtype) + t.positional_embedding[:L].to(dtype)
            mask = t.attn_mask
        if mask is not None:
            mask = mask[..., :x.shape[1], :x.shape[1]]
        return x.to(dtype), mask

    def head(self, x: Tensor, pool_idx: Tensor | None) -> Tensor:
        """(N, L', Wt) after the last block -> (N, E) unnormalised, as open_clip pools it."""
        pooled = x[:, -1] if pool_idx is None else x[torch.arange(x.shape[0], device=x.device), pool_idx]
        pooled = self.module.ln_final(pooled)  # per-token norm: the same as norming all, then pooling
        proj = self.module.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
