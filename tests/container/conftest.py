"""Container tests: podman installed (or skip), the stand-in base cached, the project image built once.

They skip with the reason when podman cannot be set up (not root, no apt, no network to Debian);
with MODERATION_CONTAINER_TESTS=require (as .ci/run sets it) that is a failure instead.
"""

from __future__ import annotations

import time

import pytest

from tests.container import podman as pm
from tests.container.podman import FIGURES, unavailable


@pytest.fixture(scope="session")
def podman_ready() -> None:
    FIGURES["_started"] = str(time.monotonic())
    out = pm.base_script("ensure", timeout=900)
    if out.returncode != 0:
        unavailable(f"podman cannot be set up here: {(out.stderr or out.stdout).strip()[-500:]}")


@pytest.fixture(scope="session")
def base_image(podman_ready) -> str:
    t0 = time.monotonic()
    out = pm.base_script("base")
    if out.returncode != 0:
        unavailable(f"stand-in base image cannot be built: {out.stderr.strip()[-1500:]}")
    name = out.stdout.strip().splitlines()[-1]
    FIGURES["stand-in base (cached or built)"] = f"{time.monotonic() - t0:.0f} s, {pm.image_size(name) / 1e9:.2f} GB"
    return name


@pytest.fixture(scope="session")
def image(base_image) -> str:
    """The project image from the unchanged Dockerfile, on the stand-in base."""
    t0 = time.monotonic()
    pm.podman("build", *pm.BUILD_FLAGS, "--build-arg", f"BASE_IMAGE={base_image}", "--tag", pm.TAG,
              "--file", str(pm.REPO / "Dockerfile"), str(pm.REPO), timeout=1500)
    size, base = pm.image_size(pm.TAG), pm.image_size(base_image)
    FIGURES["project image build"] = f"{time.monotonic() - t0:.0f} s"
    FIGURES["project image size"] = (f"{size / 1e9:.2f} GB, of which {(size - base) / 1e6:.0f} MB on top of "
                                     f"the base ({base / 1e9:.2f} GB)")
    return pm.TAG


def pytest_collection_modifyitems(items) -> None:
    """Container tests last: .ci/run builds the stand-in base in the background meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("container") is not None)


def pytest_terminal_summary(terminalreporter) -> None:
    started = FIGURES.pop("_started", None)
    if started:  # the container tests run last (above), so this is their wall time, base build included
        FIGURES["container tests, wall time"] = f"{time.monotonic() - float(started):.0f} s"
    if FIGURES:
        terminalreporter.section("container figures (measured in this run)")
        for k, v in FIGURES.items():
            terminalreporter.write_line(f"{k}: {v}")
