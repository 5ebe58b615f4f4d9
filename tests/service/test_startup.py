"""Startup failures exit non-zero with a message that says what to fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .serving import REPO, free_port

pytestmark = pytest.mark.slow


def test_missing_checkpoint_exits_with_a_clear_error(tiny_model, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env.update(MODERATION_MODEL=str(tiny_model.config), MODERATION_PRETRAINED=str(tmp_path / "missing.safetensors"),
               MODERATION_STORE_DIR=str(tmp_path), MODERATION_DEVICE="cpu", MODERATION_PORT=str(free_port()))
    out = subprocess.run([sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 3
    assert "cannot load the model" in out.stderr and "missing.safetensors" in out.stderr and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr  # the operator reads one message, not a stack
