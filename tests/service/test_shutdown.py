"""SIGTERM through a real server: /readyz turns 503, in-flight requests complete, the process exits."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .serving import image_bytes, running_server, slow_multipart, tiny_env

pytestmark = pytest.mark.slow


def test_sigterm_drains_in_flight_requests_then_exits(tiny_model, tiny_store):
    env = tiny_env(tiny_model, tiny_store.root, MODERATION_DRAIN_DELAY_S=1.5, MODERATION_DRAIN_TIMEOUT_S=20)
    data = image_bytes("jpeg")
    with running_server(env) as srv:
        results: dict[str, httpx.Response | Exception] = {}

        def in_flight(name: str, seconds: float) -> None:
            content, headers = slow_multipart(data, "photo", seconds)
            try:
                results[name] = httpx.post(srv.url + "/classify", content=content, headers=headers, timeout=60)
            except Exception as e:  # noqa: BLE001 (recorded and asserted below)
                results[name] = e

        threads = [threading.Thread(target=in_flight, args=(f"slow{s}", s)) for s in (1.0, 3.0)]
        for t in threads:
            t.start()
        time.sleep(0.4)
        t_sig = time.monotonic()
        srv.sigterm()
        time.sleep(0.3)
        ready = httpx.get(srv.url + "/readyz", timeout=5)  # still listening during the drain delay
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 200
        during = httpx.post(srv.url + "/classify", files={"image": ("a.jpg", data)}, data={"domain": "photo"},
                            timeout=30)
        assert during.status_code == 200  # traffic still served while the balancer notices
        for t in threads:
            t.join(60)
        srv.proc.wait(timeout=30)
        elapsed = time.monotonic() - t_sig
        for name, r in results.items():
            assert isinstance(r, httpx.Response) and r.status_code == 200, (name, r)
            assert r.json()["top_label"]
        assert elapsed < 25
        # once the listener is closed, new connections are refused rather than hanging
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url + "/readyz", timeout=2)
    log = srv.log()
    assert "draining" in log and "drained in-flight requests: all answered" in log and "Traceback" not in log
