"""Load and drain (issue 6 deliverable 4): queue overflow, slow uploads, SIGTERM under load, the soak."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from tests.reliability.conftest import ADMIN_TOKEN, REFERENCE, admin_headers, assert_error, classify, rss_kb
from tests.reliability.loadgen import IMAGES, Driver, slow_upload
from tests.service.serving import make_store, publish, running_server, tiny_env

SOAK_REQUESTS = 5_000
SOAK_CONCURRENCY = 16
LIMITS_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def limits_server(rel_model, tmp_path_factory):
    """A server with a one-slot queue, batches of one and a short request timeout; admin disabled."""
    root = tmp_path_factory.mktemp("rel-limits")
    make_store(root / "store", rel_model.clip)
    env = tiny_env(rel_model, root / "store", MODERATION_MAX_QUEUE="1", MODERATION_MAX_BATCH="1",
                   MODERATION_MAX_WAIT_MS="0", MODERATION_REQUEST_TIMEOUT_S=str(LIMITS_TIMEOUT_S),
                   MODERATION_BODY_TIMEOUT_S=str(LIMITS_TIMEOUT_S),
                   MODERATION_RETRY_AFTER_S="2", MODERATION_ACCESS_LOG="false")
    with running_server(env) as srv:
        yield srv


async def _burst(url: str, n: int) -> list[httpx.Response | Exception]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=20.0, limits=limits) as c:
        async def one(i: int):
            return await c.post("/classify/batch" if i % 4 == 0 else "/classify",
                                files=[("images" if i % 4 == 0 else "image", ("a.jpg", IMAGES[i % 4], "image/jpeg"))]
                                * (8 if i % 4 == 0 else 1),
                                data={"domains" if i % 4 == 0 else "domain": "photo"})
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


def test_queue_overflow_answers_503_with_retry_after_never_hangs(limits_server):
    overflow: list[httpx.Response] = []
    statuses: list[int] = []
    t0 = time.monotonic()
    for _ in range(6):  # bursts until the one-slot queue overflows (it does on the first, on a quiet machine)
        results = asyncio.run(_burst(limits_server.url, 48))
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors, errors[:3]  # every request got an answer: no hang, no reset
        for r in results:
            statuses.append(r.status_code)
            if r.status_code in (429, 503):
                overflow.append(r)
            elif r.status_code == 200 and r.request.url.path.endswith("/batch"):
                items = [x["status"] for x in r.json()["results"]]
                assert set(items) <= {200, 503}, items  # batch items overflow one by one, in the body
        if overflow:
            break
    assert set(statuses) <= {200, 429, 503}, sorted(set(statuses))
    assert overflow, f"the queue never overflowed: {statuses}"
    for r in overflow:
        assert_error(r, r.status_code, ("queue_full",))
        assert r.headers["retry-after"] == "2"
    assert time.monotonic() - t0 < 120
    with limits_server.client() as c:  # and it recovers at once
        assert c.get("/readyz").status_code == 200
        assert classify(c, REFERENCE).status_code == 200


def _flood_image() -> bytes:
    """A 1024x768 JPEG: decoding it costs real CPU (the stage a flood saturates first)."""
    import io

    import numpy as np
    from PIL import Image

    arr = (np.indices((768, 1024)).sum(0) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([arr, arr[::-1], arr[:, ::-1]], -1)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def _flood(url: str, n: int, image: bytes) -> list:
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=httpx.Limits(max_connections=n)) as c:
        async def one():
            t0 = time.monotonic()
            r = await c.post("/classify", files={"image": ("big.jpg", image, "image/jpeg")}, data={"domain": "photo"})
            return r, time.monotonic() - t0
        return await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)


def test_decode_flood_is_refused_early_not_queued_without_bound(limits_server):
    """When decoding is the bottleneck, backpressure must still answer fast (503) instead of queueing
    every upload in front of the decoder, where the request timeout never applies."""
    results = asyncio.run(_flood(limits_server.url, 200, _flood_image()))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    statuses = [r.status_code for r, _ in results]
    assert set(statuses) <= {200, 503, 504}, sorted(set(statuses))
    for r, _ in results:
        if r.status_code == 503:
            assert_error(r, 503, ("queue_full",))
            assert r.headers["retry-after"] == "2"
    times = sorted(t for _, t in results)
    median, slowest = times[len(times) // 2], times[-1]
    print(f"\nflood: {len(results)} requests, {statuses.count(503)} x 503, {statuses.count(504)} x 504, "
          f"median {median:.2f} s, slowest {slowest:.2f} s")
    # Capacity is a one-slot queue, a batch of one and two decoders: a flood of 200 simultaneous uploads
    # must be mostly turned away. Unbounded, nearly all of them waited in front of the decoder
    # (15 of 200 refused, the slowest after 6.6 s) and the queue bound meant nothing. Latency itself
    # is dominated by the HTTP transfer on this shared box, so it only gets a no-hang bound here.
    assert statuses.count(503) >= len(results) // 2, statuses
    assert slowest < 15.0, f"a request waited {slowest:.1f} s"
    with limits_server.client() as c:
        assert classify(c, REFERENCE).status_code == 200


def test_slow_upload_exceeding_the_timeout_is_cut_off(limits_server):
    duration = 6 * LIMITS_TIMEOUT_S
    status, raw, elapsed, complete = slow_upload(limits_server.url, IMAGES[0], "photo", duration_s=duration)
    assert not complete, f"the server waited for the whole {duration:.0f} s upload ({status}, {elapsed:.1f} s)"
    assert status in (408, 504), raw[:300]
    assert elapsed < LIMITS_TIMEOUT_S + 3.0, elapsed
    body = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] in ("timeout", "request_timeout"), body
    with limits_server.client() as c:
        assert classify(c, REFERENCE).status_code == 200


def test_slow_upload_within_the_timeout_succeeds(limits_server):
    status, raw, elapsed, complete = slow_upload(limits_server.url, IMAGES[1], "photo", duration_s=LIMITS_TIMEOUT_S / 3)
    assert complete and status == 200, raw[:300]


def test_admin_disabled_without_a_token(limits_server):
    with limits_server.client() as c:
        for headers in ({}, {"Authorization": "Basic dTpw"}, {"Authorization": "Bearer anything"}):
            assert_error(c.post("/admin/reload", headers=headers), 403, ("admin_disabled",))


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])  # one process; two front ends before the engine process
def test_sigterm_under_load_answers_every_in_flight_request(rel_model, tmp_path, workers):
    make_store(tmp_path / "store", rel_model.clip)
    delay, grace = 2.0, 10.0
    env = tiny_env(rel_model, tmp_path / "store", MODERATION_DRAIN_DELAY_S=str(delay),
                   MODERATION_DRAIN_TIMEOUT_S=str(grace), MODERATION_ACCESS_LOG="false", MODERATION_WORKERS=workers)
    with running_server(env) as srv:
        driver = Driver(srv.url, total=10**9, concurrency=8).start()
        while driver.done < 40:
            time.sleep(0.05)
        # uploads still streaming in when uvicorn stops accepting: they must complete, not be cut
        slow: list = []
        import threading

        uploaders = [threading.Thread(target=lambda k=k: slow.append(
            slow_upload(srv.url, IMAGES[k], "sketch", duration_s=2.2 * delay)), daemon=True) for k in range(3)]
        for t in uploaders:
            t.start()
        time.sleep(0.2)
        t_sig = time.monotonic()
        srv.sigterm()
        with srv.client(timeout=5.0) as c:  # during the drain delay: not ready, still alive and serving
            ready = c.get("/readyz")
            # with front-end processes the signal reaches them through the parent: allow it half the delay
            while ready.status_code == 200 and time.monotonic() - t_sig < delay / 2:
                time.sleep(0.02)
                ready = c.get("/readyz")
            assert_error(ready, 503, ("not_ready",))
            assert c.get("/healthz").status_code == 200
            assert classify(c, REFERENCE).status_code == 200
        time.sleep(0.2)
        driver.stop.set()  # a load balancer stops sending once /readyz fails
        driver.join(30)
        for t in uploaders:
            t.join(30)
        rc = srv.proc.wait(delay + grace + 10)
        exited = time.monotonic() - t_sig
        log = srv.log()
    outcomes = driver.outcomes
    failed = [o for o in outcomes if o.status != 200]
    in_flight = [o for o in outcomes if o.started < t_sig < o.ended]
    print(f"\nsigterm: {len(outcomes)} requests, {len(in_flight)} in flight at the signal + 3 streaming uploads, "
          f"{len(failed)} failed, exit {rc} after {exited:.1f} s")
    assert not failed, [(o.kind, o.status, o.detail) for o in failed[:5]]
    assert in_flight, "no request was in flight at SIGTERM"
    assert len(slow) == 3 and all(s[0] == 200 and s[3] for s in slow), [(s[0], s[1][:200]) for s in slow]
    assert all(s[2] - 0.2 > delay for s in slow), "the uploads must outlive the listener (closed after the delay)"
    # uvicorn re-raises the captured SIGTERM after a clean shutdown, so the parent sees the signal
    assert rc in (0, -signal.SIGTERM), (rc, log[-2000:])
    assert "Finished server process" in log
    assert exited < delay + grace, exited
    assert "drained in-flight requests: all answered" in log, log[-2000:]


@pytest.mark.slow
def test_soak_5000_requests_with_reloads(rel_model, tmp_path):
    store = make_store(tmp_path / "store", rel_model.clip)
    env = tiny_env(rel_model, tmp_path / "store", MODERATION_ADMIN_TOKEN=ADMIN_TOKEN, MODERATION_ACCESS_LOG="false")
    with running_server(env) as srv, srv.client() as admin:
        pid = srv.proc.pid
        driver = Driver(srv.url, SOAK_REQUESTS, SOAK_CONCURRENCY).start()
        t0 = time.monotonic()
        warm = SOAK_REQUESTS // 5
        rss: list[tuple[int, int]] = []
        reload_at = [int(SOAK_REQUESTS * f) for f in (0.3, 0.45, 0.6, 0.75, 0.9)]
        reloads = []
        while driver.done < SOAK_REQUESTS and any(t.is_alive() for t in driver.threads):
            n = driver.done
            if not rss or n - rss[-1][0] >= 250:
                rss.append((n, rss_kb(pid)))
            if reload_at and n >= reload_at[0]:
                k = len(reloads)
                domain = ("photo", "sketch", "comic")[k % 3]
                if k == 2:  # one broken bundle among them: refused, nothing fails
                    (store.root / domain / "v0099.safetensors").write_bytes(b"\x00" * 1000)
                    (store.root / domain / "CURRENT").write_text("v0099\n")
                else:
                    publish(store, rel_model.clip, domain, f"v{k + 2:04d}", seed=20 + k)
                r = admin.post("/admin/reload", headers=admin_headers())
                assert r.status_code == 200, r.text
                reloads.append(r.json())
                reload_at.pop(0)
                if k == 2:  # the operator fixes it; comic kept serving v0001 all along
                    (store.root / domain / "CURRENT").write_text("v0001\n")
            time.sleep(0.05)
        driver.join(60)
        duration = time.monotonic() - t0
        rss.append((driver.done, rss_kb(pid)))
        metrics = admin.get("/metrics").text
    outcomes = driver.outcomes
    failed = [o for o in outcomes if o.status != 200]
    assert len(outcomes) == SOAK_REQUESTS
    assert not failed, (len(failed), [(o.kind, o.status, o.detail) for o in failed[:5]])
    # one answer per (image, domain, bundle version): mixed batches and swaps never mix prompts up
    seen: dict = {}
    for o in outcomes:
        for key, sc in o.checks:
            ref = seen.setdefault(key, sc)
            assert all(abs(ref[k] - sc[k]) < 1e-5 for k in ref), (key, ref, sc)
    versions = {k[2] for k in seen}
    assert {"v0002", "v0003"} <= versions, versions
    assert [r["ok"] for r in reloads] == [True, True, False, True, True], reloads
    base = next(kb for n, kb in rss if n >= warm)
    peak = max(kb for n, kb in rss if n >= warm)
    growth = (rss[-1][1] - base) / base
    print(f"\nsoak: {len(outcomes)} requests, concurrency {SOAK_CONCURRENCY}, {duration:.1f} s "
          f"({len(outcomes) / duration:.0f} req/s), {len(reloads)} reloads, failures {len(failed)}, "
          f"RSS after warm-up {base / 1024:.1f} MiB, end {rss[-1][1] / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
          f"growth {100 * growth:+.2f}%")
    assert growth < 0.05, rss
    served = [ln for ln in metrics.splitlines() if ln.startswith("moderation_http_requests_total{")]
    assert served and not [ln for ln in served if 'status="5' in ln], served
