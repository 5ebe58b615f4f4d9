"""Tiny open_clip configs for the tower families PromptedCLIP serves (random init, CPU, seconds).

The timm ViTs are timm's own test models, so a server subprocess builds the same architecture
from the JSON config alone. Register them under names without "siglip": for such names
open_clip's get_tokenizer downloads SigLIP's tokenizer.
"""

from __future__ import annotations

# SigLIP-shaped: a timm ViT with learned position embedding, a prefix token and a MAP
# attention-pool head ("test_vit": 64 wide, 6 blocks, any image size), no projection
# (embed_dim = width, as SigLIP), and SigLIP's text tower: bidirectional, last-token pooling,
# a Linear projection with bias. Its tokenizer is CLIP's (SigLIP's own is downloaded).
TINY_SIGLIP = {
    "embed_dim": 64,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {"image_size": 32, "timm_model_name": "test_vit", "timm_model_pretrained": False,
                   "timm_pool": "map", "timm_proj": "none"},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
}

# CoCa-shaped: attention-pool vision head, text tower with an appended CLS and the pad mask.
TINY_COCA = {
    "embed_dim": 32,
    "custom_text": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32,
                   "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2},
}

# A convolutional tower: open_clip's ModifiedResNet.
TINY_RESNET = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_eva() -> list[str]:
    """Register tiny timm Eva trunks (in this process only) and open_clip configs around them:
    EVA02-shaped (class token, token pooling), PE-shaped (rope attention, MAP head), and one
    with mixed RoPE (refused). Returns the open_clip config names."""
    import timm
    from timm.models import register_model
    from timm.models.eva import Eva

    shapes = {
        "tiny_eva02_rope": dict(global_pool="token", swiglu_mlp=True, scale_mlp=True, ref_feat_shape=(4, 4)),
        "tiny_pe_rope": dict(global_pool="map", attn_type="rope", use_pre_transformer_norm=True,
                             rope_grid_offset=1.0, rope_grid_indexing="xy", ref_feat_shape=(4, 4),
                             attn_pool_num_heads=2),
        "tiny_mixed_rope": dict(global_pool="token", attn_type="rope", rope_type="mixed"),
    }
    for name, extra in shapes.items():
        if name in timm.list_models(name):
            continue

        def build(pretrained: bool = False, _extra=extra, **kwargs) -> Eva:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
            return Eva(**{**dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                                 use_rot_pos_emb=True), **_extra, **kwargs})

        build.__name__ = name
        register_model(build)
    from promptclip import register_config

    names = []
    for trunk in shapes:
        cfg = {"embed_dim": 64, "custom_text": True,  # no projection head: embed_dim = trunk width
               "vision_cfg": {"image_size": 32, "timm_model_name": trunk, "timm_pool": shapes[trunk]["global_pool"],
                              "timm_proj": "none"},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
        register_config(f"test-{trunk}", cfg)
        names.append(f"test-{trunk}")
    return names
