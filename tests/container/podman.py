"""Podman as this machine allows it (DESIGN §12): runc, cgroupfs, no rlimits, host network, docker format.

`scripts/container_base.sh` installs podman and builds the stand-in torch base; this module wraps
the podman calls the container tests make, with the same flags and CONTAINERS_CONF.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CONTAINER_CACHE", "/var/tmp/promptclip-container"))
CONF = CACHE / "containers.conf"
SCRIPT = REPO / "scripts" / "container_base.sh"
FLAGS = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
BUILD_FLAGS = ["--network", "host", "--format", "docker"]  # OCI format drops HEALTHCHECK
TAG = "localhost/promptclip-moderation:container-test"
FIGURES: dict[str, str] = {}  # measured by the tests, printed at the end of the run (conftest)


def unavailable(reason: str) -> None:
    """Skip for want of podman or its tools, or fail where MODERATION_CONTAINER_TESTS=require (CI)."""
    import pytest

    if os.environ.get("MODERATION_CONTAINER_TESTS") == "require":
        pytest.fail(f"container tests required but {reason}")
    pytest.skip(reason)


def env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF), "CONTAINER_CACHE": str(CACHE),
            "PIP_CMD": f"{sys.executable} -m pip"}


def podman(*args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *FLAGS, *args], env=env(), capture_output=True, text=True,
                         timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def base_script(command: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], env=env(), capture_output=True, text=True,
                          timeout=timeout)


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


def compose_cmd() -> list[str] | None:
    """podman-compose, as a console script next to this Python or on PATH."""
    here = Path(sys.executable).with_name("podman-compose")
    if here.exists():
        return [str(here)]
    found = shutil.which("podman-compose")
    return [found] if found else None


@dataclass
class Container:
    name: str
    port: int
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inspect(self) -> dict:
        return json.loads(podman("container", "inspect", self.name).stdout)[0]

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def health(self) -> str:
        state = self.inspect()["State"]
        return (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "")

    def wait_healthy(self, timeout: float = 240) -> float:
        """Poll podman's view of the image's own HEALTHCHECK (run by `podman healthcheck run`: no
        systemd timers here); return seconds from start to healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.inspect()["State"]
            if not state["Running"]:
                raise RuntimeError(f"container exited with {state['ExitCode']}:\n{self.logs()[-4000:]}")
            if podman("healthcheck", "run", self.name, check=False).returncode == 0:
                return time.monotonic() - self.started
            time.sleep(2)
        raise TimeoutError(f"not healthy after {timeout} s:\n{self.logs()[-4000:]}")

    def remove(self) -> None:
        podman("rm", "--force", "--time", "5", self.name, check=False)


def run_container(image: str, name: str, port: int, env_vars: dict[str, str] | None = None,
                  volumes: list[str] | None = None, publish: int | None = None, read_only: bool = False) -> Container:
    """Run `image` detached. With `publish`, on podman's bridge with container port 8000 (the image's
    default) published on 127.0.0.1:`publish`; else on the host network with MODERATION_PORT=`port`.
    `read_only`: read-only root filesystem with a tmpfs /tmp (readOnlyRootFilesystem in docs/deploy.md)."""
    podman("rm", "--force", name, check=False)
    args = ["run", "--detach", "--name", name] + (["--read-only", "--read-only-tmpfs"] if read_only else [])
    if publish:
        args += ["--publish", f"127.0.0.1:{publish}:8000"]
    else:
        args += ["--network", "host", "--env", f"MODERATION_PORT={port}"]
    for k, v in (env_vars or {}).items():
        args += ["--env", f"{k}={v}"]
    for v in volumes or []:
        args += ["--volume", v]
    podman(*args, image)
    return Container(name, publish or port)
