"""`python -m service` on a store it cannot use exits 3 at once with one line that says so (no podman
needed; tests/container/test_container.py checks the same in the image, unreadable files included)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.service.serving import REPO, free_port


@pytest.mark.parametrize("case", ["missing", "file"])
def test_unusable_store_exits_3_with_one_line(tmp_path, case):
    store = tmp_path / "store"
    if case == "file":
        store.write_text("not a directory\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env.update(MODERATION_STORE_DIR=str(store), MODERATION_PORT=str(free_port()), MODERATION_DEVICE="cpu")
    out = subprocess.run([sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 3, out.stderr[-2000:]
    lines = [x for x in out.stderr.splitlines() if "cannot read the bundle store" in x]
    assert len(lines) == 1, out.stderr[-2000:]
    assert f"{store} {'does not exist' if case == 'missing' else 'is not a directory'}" in lines[0]
    assert "loading CLIP" not in out.stderr, "the store is checked before the slow model load"
    assert "Traceback" not in out.stderr
