"""The committed embedded tiny CLIP and demo bundles load together through the core loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from promptclip import ModelSpec, PromptStore, load_clip
from promptclip.loading import EMBEDDED_WEIGHTS

STORE = Path(__file__).resolve().parents[2] / "prompts_store"


@pytest.mark.skipif(not EMBEDDED_WEIGHTS.exists(), reason="embedded model not built (scripts/build_demo.sh)")
def test_embedded_model_and_demo_bundles_load():
    clip = load_clip(ModelSpec())  # defaults: tiny-clip, embedded
    assert clip.info.architecture == "tiny-clip" and clip.info.image_size == 48
    with safe_open(str(EMBEDDED_WEIGHTS), "pt") as f:
        zs = json.loads(f.metadata()["zero_shot_accuracy"])
    assert zs["photo"] > zs["sketch"]  # the photo template works on photos, not sketches
    store = PromptStore(STORE)
    assert {"photo", "sketch", "comic"} <= set(store.domains())
    for d in store.domains():
        b = store.load_current(d, clip.info)  # checks base model, shapes, checksum, stem
        assert 0.0 <= b.manifest.metrics["accuracy"] <= 1.0
        assert {lab.name for lab in b.manifest.labels if lab.unsafe} == {"knife", "pistol", "syringe", "pill"}
