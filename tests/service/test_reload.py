"""Hot reload under concurrent load through a real server: zero failed requests, broken bundles refused."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from promptclip import Label

from .serving import LABELS, image_bytes, make_store, publish, running_server, tiny_env

TOKEN = "reload-token"
pytestmark = pytest.mark.slow


def test_hot_reload_under_load_with_refusals(tiny_model, tmp_path):
    clip = tiny_model.clip
    store = make_store(tmp_path / "store", clip)
    env = tiny_env(tiny_model, store.root, MODERATION_ADMIN_TOKEN=TOKEN, MODERATION_MAX_WAIT_MS=5)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    images = [image_bytes(k, seed=i) for i, k in enumerate(["jpeg", "png", "webp"])]
    with running_server(env) as srv, srv.client() as admin:
        stop = threading.Event()
        seen: list[tuple[int, str, str, int, float]] = []  # status, domain, version, n labels, time

        def hammer(worker: int) -> None:
            with srv.client() as c:
                i = worker
                while not stop.is_set():
                    domain = ["photo", "sketch", "comic"][i % 3]
                    r = c.post("/classify", files={"image": ("x", images[i % 3])}, data={"domain": domain})
                    body = r.json()
                    ok = r.status_code == 200
                    seen.append((r.status_code, domain, body["bundle"]["version"] if ok else str(body),
                                 len(body["labels"]) if ok else 0, time.monotonic()))
                    i += 1

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(hammer, w) for w in range(4)]
            time.sleep(1.0)
            # 1. a new photo version with one more label, published while traffic flows
            new_labels = [*LABELS["photo"], Label("drugs", "a photo of drugs.", unsafe=True, threshold=0.5)]
            publish(store, clip, "photo", "v0002", labels=new_labels, seed=11)
            r = admin.post("/admin/reload", headers=auth).json()
            t_swap = time.monotonic()
            assert r["ok"] and r["loaded"] == [{"domain": "photo", "version": "v0002", "previous": "v0001"}], r
            time.sleep(1.0)
            # 2. a corrupt sketch file that CURRENT points at: refused, v0001 keeps serving
            (store.root / "sketch" / "v0002.safetensors").write_bytes(b"\x00" * 100)
            (store.root / "sketch" / "CURRENT").write_text("v0002\n")
            # 3. a comic bundle with a checksum mismatch (one tensor byte flipped after publishing)
            path = publish(store, clip, "comic", "v0002", seed=12)
            raw = bytearray(path.read_bytes())
            raw[-3] ^= 0xFF
            path.write_bytes(bytes(raw))
            r = admin.post("/admin/reload", headers=auth).json()
            assert not r["ok"]
            refused = {x["domain"]: x["kind"] for x in r["refused"]}
            assert refused == {"sketch": "corrupt", "comic": "checksum"}, r
            assert r["domains"] == {"comic": "v0001", "photo": "v0002", "sketch": "v0001"}
            # 4. CURRENT naming a missing version, then a rollback of photo
            (store.root / "comic" / "CURRENT").write_text("v0009\n")
            store.rollback("photo", "v0001")
            r = admin.post("/admin/reload", headers=auth).json()
            assert {x["domain"]: x["kind"] for x in r["refused"]} == {"sketch": "corrupt", "comic": "missing"}
            assert r["domains"]["photo"] == "v0001"
            time.sleep(1.0)
            stop.set()
            for f in futures:
                f.result()
        failed = [s for s in seen if s[0] != 200]
        assert not failed, failed[:5]
        assert len(seen) > 50
        photo = [(v, n, t) for _, d, v, n, t in seen if d == "photo"]
        assert {v for v, _, _ in photo} == {"v0001", "v0002"}
        assert all(n == (4 if v == "v0002" else 3) for v, n, _ in photo), "labels always match the version"
        assert all(v == "v0002" for v, _, t in photo if t_swap + 0.5 < t < t_swap + 1.0)
        assert {v for _, d, v, _, _ in seen if d != "photo"} == {"v0001"}
        domains = {d["domain"]: d["version"] for d in admin.get("/domains").json()["domains"]}
        assert domains == {"comic": "v0001", "photo": "v0001", "sketch": "v0001"}
        metrics = admin.get("/metrics").text
        assert 'moderation_reloads_total{outcome="refused"} 2.0' in metrics
        assert 'moderation_bundle_loaded{domain="photo",sha256=' in metrics
    log = srv.log()
    assert "refused bundle sketch@v0002 (corrupt)" in log and "still serving v0001" in log


def test_missing_store_and_poll(tiny_model, tmp_path):
    """Polling picks up a new CURRENT without an admin call; a vanished store keeps everything serving."""
    clip = tiny_model.clip
    store = make_store(tmp_path / "store", clip, domains={"photo": LABELS["photo"]})
    env = tiny_env(tiny_model, store.root, MODERATION_POLL_INTERVAL_S=0.3, MODERATION_ADMIN_TOKEN=TOKEN)
    with running_server(env) as srv, srv.client() as c:
        publish(store, clip, "photo", "v0002", seed=3)
        deadline = time.monotonic() + 20
        while c.get("/domains").json()["domains"][0]["version"] != "v0002":
            assert time.monotonic() < deadline, "poll never loaded v0002"
            time.sleep(0.2)
        os.rename(store.root, tmp_path / "gone")
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert not r["ok"] and r["domains"] == {"photo": "v0002"}
        res = c.post("/classify", files={"image": ("x", image_bytes("jpeg"))}, data={"domain": "photo"})
        assert res.status_code == 200 and res.json()["bundle"]["version"] == "v0002"
