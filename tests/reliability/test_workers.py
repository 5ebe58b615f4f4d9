"""The multi-process layout (MODERATION_WORKERS=2): two front ends on one port before one engine process.

Real processes, real HTTP: every route answers as in one process, the front ends hold no torch,
/metrics adds up all processes, a hot reload reaches the engine under load, and when the engine
process dies under load every request still gets an answer or a 503, never a hang.
"""

from __future__ import annotations

import base64
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import ADMIN_TOKEN, REFERENCE, admin_headers, assert_error, classify
from tests.reliability.loadgen import Driver
from tests.service.serving import free_port, make_store, publish, running_server, tiny_env


def children(pid: int) -> dict[int, str]:
    """pid -> command line of every process whose parent is `pid`."""
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
    return out


def same_labels(a: list[dict], b: list[dict]) -> bool:
    """Equal labels, flags and order; scores equal to float tolerance."""
    def split(labels):
        return ([{k: v for k, v in lab.items() if not isinstance(v, float)} for lab in labels],
                [v for lab in labels for v in lab.values() if isinstance(v, float)])
    (fa, va), (fb, vb) = split(a), split(b)
    return fa == fb and va == pytest.approx(vb, rel=1e-5, abs=1e-6)


@pytest.fixture()
def workers_env(rel_model, tmp_path):
    store = make_store(tmp_path / "store", rel_model.clip)
    env = tiny_env(rel_model, tmp_path / "store", MODERATION_WORKERS="2", MODERATION_ADMIN_TOKEN=ADMIN_TOKEN,
                   MODERATION_ACCESS_LOG="false", MODERATION_REVIEW_DB="off")
    return store, env


@pytest.mark.slow
def test_two_front_ends_answer_every_route_and_hold_no_torch(workers_env, rel_model):
    store, env = workers_env
    with running_server(env) as srv, srv.client() as c:
        procs = children(srv.proc.pid)
        fronts = [p for p, cmd in procs.items() if "service.frontend" in cmd]
        engines = [p for p, cmd in procs.items() if "service.engine_server" in cmd]
        assert len(fronts) == 2 and len(engines) == 1, procs
        for p in fronts:  # no torch library mapped into a front end
            assert "libtorch" not in Path(f"/proc/{p}/maps").read_text(), p
        assert "libtorch" in Path(f"/proc/{engines[0]}/maps").read_text()

        one = classify(c, REFERENCE)
        assert one.status_code == 200 and one.json()["domain"] == "photo", one.text
        as_json = c.post("/classify", json={"image": base64.b64encode(REFERENCE).decode(), "domain": "photo"})
        assert as_json.json()["labels"] == one.json()["labels"]
        batch = c.post("/classify/batch", files=[("images", ("a.jpg", REFERENCE, "image/jpeg"))] * 3,
                       data={"domains": ["photo", "sketch", "nope"]}).json()["results"]
        assert [r["status"] for r in batch] == [200, 200, 404], batch
        # a batch may run in another micro-batch shape than the lone request: equal to float tolerance
        assert same_labels(batch[0]["result"]["labels"], one.json()["labels"])
        assert_error(classify(c, REFERENCE, domain="nope"), 404, ("unknown_domain",))
        assert_error(classify(c, b"not an image"), 400, ("undecodable_image",))
        moderation = c.post("/v1/moderations", json={"model": "photo", "input": [{"type": "image_url", "image_url": {
            "url": "data:image/jpeg;base64," + base64.b64encode(REFERENCE).decode()}}]})
        assert moderation.status_code == 200 and moderation.json()["model"] == "photo@v0001", moderation.text

        # the engine's app answers every other route, as in one process
        assert sorted(d["domain"] for d in c.get("/domains").json()["domains"]) == ["comic", "photo", "sketch"]
        paths = c.get("/openapi.json").json()["paths"]
        assert {"/classify", "/classify/batch", "/v1/moderations", "/domains", "/admin/reload"} <= set(paths)
        assert_error(c.post("/admin/reload"), 401, ("unauthorized",))
        assert c.get("/docs").status_code == 200

        metrics = c.get("/metrics").text  # one scrape: HTTP counters of both front ends, images of the engine
        images = sum(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith("moderation_images_total{"))
        assert images == 5, images  # 1 + 1 (JSON) + 2 (batch) + 1 (moderation)
        assert 'route="/domains"' in metrics and 'route="/classify"' in metrics


def _serves_port(pid: int, port: int) -> bool:
    try:
        return f"MODERATION_PORT={port}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _hold_one_front_end(seen: list[int], port: int, stop: threading.Event) -> None:
    """Freeze one front end of the server on `port` (SIGSTOP) as soon as it exists, poll /readyz on fresh
    connections for a second after its sibling reports ready, then let it go (SIGCONT). `seen`: the
    statuses answered."""
    url = f"http://127.0.0.1:{port}"
    fronts: list[int] = []
    while len(fronts) < 2 and not stop.is_set():
        services = [p for p, cmd in children(os.getpid()).items() if "-m service" in cmd and _serves_port(p, port)]
        fronts = [p for s in services for p, cmd in children(s).items() if "service.frontend" in cmd]
    held, other = fronts[0], fronts[1:]
    os.kill(held, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        marks = [f"moderation-*/ready/{p}" for p in other]
        while not any(any(Path(tempfile.gettempdir()).glob(m)) for m in marks) \
                and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.01)
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            try:
                seen.append(httpx.get(url + "/readyz", timeout=0.2).status_code)
            except httpx.TransportError:
                seen.append(-1)  # the connection landed on the frozen front end
    finally:
        os.kill(held, signal.SIGCONT)


@pytest.mark.slow
def test_readyz_is_200_only_once_every_front_end_is_ready(workers_env):
    """SO_REUSEPORT spreads new connections over the front ends, so one front end's readiness is not the
    service's: while one front end is held before it is ready, /readyz never answers 200."""
    _, env = workers_env
    port, seen, stop = free_port(), [], threading.Event()
    holder = threading.Thread(target=_hold_one_front_end, args=(seen, port, stop))
    holder.start()
    try:
        with running_server({**env, "MODERATION_PORT": str(port)}, port=port) as srv, srv.client() as c:
            holder.join(60)
            assert classify(c, REFERENCE).status_code == 200
    finally:
        stop.set()
        holder.join(60)
    assert 503 in seen and 200 not in seen, seen


@pytest.mark.slow
def test_hot_reload_reaches_the_engine_under_load(workers_env, rel_model):
    store, env = workers_env
    with running_server(env) as srv, srv.client() as admin:
        driver = Driver(srv.url, total=600, concurrency=6).start()
        while driver.done < 100:
            time.sleep(0.05)
        publish(store, rel_model.clip, "photo", "v0002", seed=7)
        r = admin.post("/admin/reload", headers=admin_headers())
        assert r.status_code == 200 and r.json()["domains"]["photo"] == "v0002", r.text
        driver.join(120)
    failed = [o for o in driver.outcomes if o.status != 200]
    assert not failed, [(o.kind, o.status, o.detail) for o in failed[:5]]
    versions = {key[2] for o in driver.outcomes for key, _ in o.checks if key[1] == "photo"}
    assert versions == {"v0001", "v0002"}, versions


@pytest.mark.slow
def test_killing_the_engine_under_load_answers_503_never_hangs(workers_env):
    _, env = workers_env
    with running_server({**env, "MODERATION_DRAIN_DELAY_S": "0"}) as srv:
        (engine,) = [p for p, cmd in children(srv.proc.pid).items() if "service.engine_server" in cmd]
        driver = Driver(srv.url, total=10**9, concurrency=8, timeout=20.0).start()
        while driver.done < 60:
            time.sleep(0.05)
        t_kill = time.monotonic()
        os.kill(engine, signal.SIGKILL)
        with httpx.Client(base_url=srv.url, timeout=5.0) as c:
            try:  # a front end still up turns not ready within a moment, and answers 503 for images
                while (ready := c.get("/readyz")).status_code == 200 and time.monotonic() - t_kill < 1.0:
                    time.sleep(0.01)
                assert_error(ready, 503, ("not_ready",))
                assert_error(classify(c, REFERENCE), 503, ("engine_unavailable",))
            except httpx.TransportError:
                pass  # or the front ends have already stopped listening
        rc = srv.proc.wait(30)
        driver.stop.set()
        driver.join(30)
    after = [o for o in driver.outcomes if o.ended > t_kill]
    kinds = {o.status for o in after}
    # every request in flight at the kill got an answer (503) or its connection refused/closed: none hung
    assert kinds <= {200, 503, 1503, -1}, kinds
    assert all(o.ended - o.started < 20.0 for o in after), max(o.ended - o.started for o in after)
    answered_503 = [o for o in after if o.status in (503, 1503)]
    assert answered_503, kinds
    assert all("engine_unavailable" in o.detail or "not_ready" in o.detail for o in answered_503), \
        {o.detail for o in answered_503}
    assert rc == 1, rc  # non-zero: the service's own supervisor (systemd, Kubernetes, podman) restarts it
