"""Every tower family PromptedCLIP serves keeps the invariants of DESIGN §3; the others are refused.

The invariants are checked by scripts/check_towers.py's own `check` (the script runs it on
full-size open_clip architectures); here it runs on tiny configs of each family.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import open_clip
import pytest
import torch

from promptclip import (
    BundleError,
    ClipLoadError,
    ModelSpec,
    PromptConfig,
    PromptedCLIP,
    TaskPrompts,
    bundle_from_prompts,
    insert_placeholders,
    load_bundle,
    load_clip,
    register_config,
    save_bundle,
)
from promptclip.bundle import Label
from tests.tiny_towers import TINY_COCA, TINY_RESNET, TINY_SIGLIP, register_tiny_eva

_spec = importlib.util.spec_from_file_location("check_towers", Path(__file__).parents[2] / "scripts/check_towers.py")
check_towers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_towers)


@pytest.fixture(scope="module")
def tiny_families(tiny_arch) -> dict[str, str]:
    """family label -> registered open_clip config name."""
    register_config("test-map-vit", TINY_SIGLIP)
    register_config("test-coca", TINY_COCA)
    register_config("test-resnet", TINY_RESNET)
    eva02, pe, mixed = register_tiny_eva()
    return {"open_clip-vit": tiny_arch, "timm-vit (MAP head)": "test-map-vit", "coca": "test-coca",
            "eva02 (RoPE)": eva02, "pe (RoPE, MAP head)": pe, "resnet": "test-resnet", "mixed-rope": mixed}


@pytest.mark.parametrize("family", ["open_clip-vit", "timm-vit (MAP head)", "coca", "eva02 (RoPE)",
                                    "pe (RoPE, MAP head)"])
def test_served_towers_keep_every_invariant(tiny_families, family):
    r = check_towers.check(tiny_families[family])
    assert r["verdict"] == "pass", r
    for tower in ("image", "text"):
        assert r[tower]["zero_tokens_diff"] <= 1e-5
        assert r[tower]["mixed_vs_per_task_diff"] <= 1e-5
        assert r[tower]["least_change_from_one_layer"] > 1e-4
    assert r["frozen_params_with_grad"] == 0


def test_map_head_never_sees_prompt_tokens(tiny_families):
    """The MAP head pools exactly the original tokens: what it gets equals a hooked bare forward."""
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_families["timm-vit (MAP head)"], pretrained=None).eval()
    enc = PromptedCLIP(model)
    seen = []
    hook = model.visual.trunk.attn_pool.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 32, 32))
        enc.encode_image(torch.randn(2, 3, 32, 32), torch.randn(2, enc.vision_layers, 5, enc.vision_width))
    hook.remove()
    assert seen[0] == seen[1]  # (B, patches, W): no prompt tokens, no prefix token


@pytest.mark.parametrize("family,tower", [("resnet", "ModifiedResNet"), ("mixed-rope", "RotaryEmbeddingMixed")])
def test_unservable_towers_are_refused_naming_the_tower(tiny_families, family, tower):
    model = open_clip.create_model(tiny_families[family], pretrained=None)
    with pytest.raises(ValueError, match=tower) as e:
        PromptedCLIP(model)
    assert "Supported image towers" in str(e.value) and "SigLIP" in str(e.value)
    with pytest.raises(ClipLoadError, match=tower):
        load_clip(ModelSpec(model=tiny_families[family], pretrained=None))


def test_timm_convnext_is_refused_naming_it():
    register_config("test-convnext", {**TINY_RESNET, "vision_cfg": {
        "image_size": 32, "timm_model_name": "test_convnext", "timm_pool": "avg", "timm_proj": "linear"}})
    with pytest.raises(ValueError, match=r"TimmModel\(ConvNeXt\)"):
        PromptedCLIP(open_clip.create_model("test-convnext", pretrained=None))


def test_bundle_for_another_tower_family_is_refused_precisely(tmp_path, tiny_clip, tiny_families):
    torch.manual_seed(0)
    other = load_clip(ModelSpec(model=tiny_families["timm-vit (MAP head)"], pretrained=None))
    assert (tiny_clip.info.family, other.info.family) == ("open_clip-vit", "timm-vit")
    i = other.info
    prompts = TaskPrompts(["photo"], [["photo"]], PromptConfig(1, 1), i.vision_width, i.vision_layers,
                          i.text_width, i.text_layers)
    path = save_bundle(bundle_from_prompts(prompts, "photo", version="v1", base=i,
                                           labels=[Label("a", "a photo of a.")]), tmp_path / "v1.safetensors")
    assert load_bundle(path, other.info).manifest.base_model["family"] == "timm-vit"
    with pytest.raises(BundleError, match="trained for a timm-vit image tower .* has a open_clip-vit tower"):
        load_bundle(path, tiny_clip.info)


def test_placeholders_need_padding_of_any_id():
    """CLIP pads with 0, SentencePiece tokenizers (SigLIP) with their pad / EOS id."""
    clip_row = torch.tensor([[49406, 320, 49407, 0, 0, 0, 0]])
    assert insert_placeholders(clip_row, 2, 9).tolist() == [[49406, 9, 9, 320, 49407, 0, 0]]
    spm_row = torch.tensor([[17, 23, 1, 1, 1, 1]])  # no SOT; EOS = pad = 1
    assert insert_placeholders(spm_row, 3, 9).tolist() == [[17, 9, 9, 9, 23, 1]]
    with pytest.raises(ValueError, match="too long"):
        insert_placeholders(clip_row, 4, 9)
