"""Shared fixtures: tiny open_clip configs (random init, CPU), built in seconds."""

from __future__ import annotations

import pytest
import torch

from promptclip import ModelSpec, load_clip, register_config

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}


@pytest.fixture(scope="session")
def tiny_arch() -> str:
    register_config("test-tiny", TINY)
    return "test-tiny"


@pytest.fixture(scope="session")
def tiny_clip(tiny_arch):
    torch.manual_seed(0)
    return load_clip(ModelSpec(model=tiny_arch, pretrained=None))
