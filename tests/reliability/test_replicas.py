"""Two replicas share one store behind a round-robin proxy; a new bundle version is published under
steady traffic and both converge through MODERATION_POLL_INTERVAL_S, with no failed request.

This is the Kubernetes set-up of docs/deploy.md in small: replicas are stateless apart from the
read-only store, and a publish (PromptStore.publish, as `python -m training export` does) is the
only coordination.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.reliability.loadgen import IMAGES
from tests.service.serving import make_store, make_tiny_model, publish, running_server, tiny_env

pytestmark = pytest.mark.slow

POLL_S = 2.0  # MODERATION_POLL_INTERVAL_S of both replicas; convergence must take at most 2 * POLL_S


class RoundRobinProxy:
    """A plain HTTP reverse proxy: request k goes to upstream k mod n; X-Upstream says which."""

    def __init__(self, upstreams: list[str]):
        self.upstreams = upstreams
        self._next = itertools.cycle(range(len(upstreams)))
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=60.0, limits=httpx.Limits(max_connections=64))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                with proxy._lock:
                    k = next(proxy._next)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {h: v for h, v in self.headers.items() if h.lower() in ("content-type", "authorization")}
                try:
                    r = proxy._http.request(self.command, proxy.upstreams[k] + self.path, content=body, headers=headers)
                    status, payload, ctype = r.status_code, r.content, r.headers.get("content-type", "")
                except httpx.HTTPError as e:
                    status, payload, ctype = 502, repr(e).encode(), "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-Upstream", str(k))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RoundRobinProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.close()


@dataclass
class Sample:
    sent: float
    done: float
    status: int  # -1: transport error
    upstream: int
    version: str


def steady_traffic(url: str, stop: threading.Event, out: list[Sample], lock: threading.Lock,
                   clients: int = 3, pause_s: float = 0.02, limit_s: float = 60.0) -> list[threading.Thread]:
    """`clients` threads, each sending /classify for `photo` back to back (pause_s apart) until `stop`."""

    def run(seed: int) -> None:
        end = time.monotonic() + limit_s  # bounded even if the test fails to stop it
        with httpx.Client(base_url=url, timeout=30.0) as c:
            for i in itertools.count(seed):
                if stop.is_set() or time.monotonic() > end:
                    return
                t0 = time.monotonic()
                try:
                    r = c.post("/classify", files={"image": ("a.jpg", IMAGES[i % len(IMAGES)], "image/jpeg")},
                               data={"domain": "photo"})
                    status, up = r.status_code, int(r.headers.get("x-upstream", -1))
                    version = r.json()["bundle"]["version"] if status == 200 else r.text[:200]
                except httpx.HTTPError as e:
                    status, up, version = -1, -1, repr(e)
                with lock:
                    out.append(Sample(t0, time.monotonic(), status, up, version))
                time.sleep(pause_s)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    return threads


def served_version(url: str) -> str | None:
    try:
        domains = httpx.get(url + "/domains", timeout=5.0).json()["domains"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return next((d["version"] for d in domains if d["domain"] == "photo"), None)


def test_two_replicas_converge_on_a_published_version_without_failed_requests(tmp_path, capsys):
    model = make_tiny_model(tmp_path / "model")
    store = make_store(tmp_path / "store", model.clip)
    env = tiny_env(model, store.root, MODERATION_POLL_INTERVAL_S=str(POLL_S), MODERATION_ACCESS_LOG="false")
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(running_server(env)) for _ in range(2)]
        proxy = stack.enter_context(RoundRobinProxy([r.url for r in replicas]))
        samples: list[Sample] = []
        lock, stop = threading.Lock(), threading.Event()
        threads = steady_traffic(proxy.url, stop, samples, lock)
        try:
            time.sleep(2.0)  # steady state on v0001 through both replicas
            with lock:
                assert {s.upstream for s in samples if s.status == 200} == {0, 1}, "traffic reaches both"
            published = time.monotonic()
            publish(store, model.clip, "photo", "v0002", seed=42)
            switched: dict[int, float] = {}
            deadline = published + 2 * POLL_S + 5.0  # watch past the bound, so a late switch is measured
            while len(switched) < 2 and time.monotonic() < deadline:
                for k, r in enumerate(replicas):
                    if k not in switched and served_version(r.url) == "v0002":
                        switched[k] = time.monotonic() - published
                time.sleep(0.05)
            # traffic goes on past the bound: all of it must be on the new version by then
            time.sleep(max(0.0, published + 2 * POLL_S - time.monotonic()) + 1.5)
        finally:
            stop.set()
            for t in threads:
                t.join(30)

    failed = [s for s in samples if s.status != 200]
    after = [s for s in samples if s.sent > published + 2 * POLL_S]
    per_replica = {k: sum(1 for s in samples if s.upstream == k) for k in (0, 1)}
    times = ", ".join(f"{switched[k]:.2f} s" if k in switched else "never" for k in (0, 1))
    with capsys.disabled():
        print(f"\nreplicas: {len(samples)} requests ({per_replica} per replica), {len(failed)} failed; "
              f"converged on v0002 after {times} (POLL_INTERVAL_S={POLL_S}, bound {2 * POLL_S:.1f} s)")
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[:3]}"
    assert set(switched) == {0, 1}, f"replicas that never served v0002: {sorted({0, 1} - set(switched))}"
    assert max(switched.values()) <= 2 * POLL_S, switched
    # each replica flips once: no v0001 answer from a request sent after that replica switched
    for k in (0, 1):
        flipped = published + switched[k]
        stale = [s for s in samples if s.upstream == k and s.sent > flipped and s.version != "v0002"]
        assert not stale, f"replica {k} answered an old version after switching: {stale[:3]}"
    assert after and all(s.version == "v0002" for s in after), "all traffic is on v0002 after 2 intervals"
    for r in replicas:
        assert "photo@v0002" in r.log(), r.log()[-2000:]
