"""End to end on a SigLIP-shaped tiny CLIP (timm ViT + MAP head, bidirectional last-token text
tower): train 2 domains for a few steps, export, serve with `python -m service`, classify over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from safetensors.torch import save_file

from promptclip import ModelSpec, PromptStore, load_bundle, load_clip
from tests.service.serving import running_server
from tests.tiny_towers import TINY_SIGLIP
from training import main

from .conftest import FAST

pytestmark = pytest.mark.slow


def test_siglip_shaped_model_trains_exports_and_serves(tmp_path, world):
    cfg = tmp_path / "tiny-map-vit.json"  # no "siglip" in the name: open_clip would download SigLIP's tokenizer
    cfg.write_text(json.dumps(TINY_SIGLIP))
    torch.manual_seed(0)
    model = load_clip(ModelSpec(model=str(cfg), pretrained=None)).model
    ckpt = tmp_path / "tiny-map-vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))

    run, store = tmp_path / "run", tmp_path / "store"
    fast = FAST[FAST.index("--shots"):]
    assert main(["fit", "--data", str(world), "--out", str(run), "--store", str(store), "--model", str(cfg),
                 "--pretrained", str(ckpt), "--domains", "photo", "sketch", *fast,
                 "--group-steps", "4", "--group-snapshots", "2", "4"]) == 0
    st = PromptStore(store)
    assert st.domains() == ["photo", "sketch"]
    bundle = load_bundle(st.path("photo", st.current_version("photo")))
    assert bundle.manifest.base_model["family"] == "timm-vit"
    assert bundle.manifest.base_model["vision_layers"] == 6

    env = {"MODERATION_MODEL": str(cfg), "MODERATION_PRETRAINED": str(ckpt), "MODERATION_STORE_DIR": str(store),
           "MODERATION_DEVICE": "cpu"}
    image = next((world / "sketch").glob("*/*.png")).read_bytes()
    with running_server(env) as srv:
        r = httpx.post(srv.url + "/classify", files={"image": ("a.png", image, "image/png")},
                       data={"domain": "sketch"}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["domain"] == "sketch" and body["model"] == "tiny-map-vit"
        assert len(body["labels"]) == len(bundle.manifest.labels)
        assert all(0 <= lab["probability"] <= 1 for lab in body["labels"])
        missing = httpx.post(srv.url + "/classify", files={"image": ("a.png", image, "image/png")},
                             data={"domain": "comic"}, timeout=60)
        assert missing.status_code == 404


def test_convolutional_tower_is_refused_in_one_line_by_both_clis(tmp_path, world, caplog):
    """Same exit codes as the other load errors: 2 for the training CLI, 3 for `python -m service`."""
    import os
    import subprocess
    import sys

    from tests.service.serving import REPO, free_port
    from tests.tiny_towers import TINY_RESNET

    cfg = tmp_path / "tiny-rn.json"
    cfg.write_text(json.dumps(TINY_RESNET))
    assert main(["group", "--data", str(world), "--out", str(tmp_path / "run"), "--model", str(cfg),
                 "--pretrained", "", "--domains", "photo", "sketch"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "ModifiedResNet" in errors[0] and "Supported image towers" in errors[0]

    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env.update(MODERATION_MODEL=str(cfg), MODERATION_PRETRAINED="", MODERATION_STORE_DIR=str(tmp_path),
               MODERATION_DEVICE="cpu", MODERATION_PORT=str(free_port()))
    out = subprocess.run([sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 3
    assert "cannot load the model" in out.stderr and "ModifiedResNet" in out.stderr
    assert "Traceback" not in out.stderr
