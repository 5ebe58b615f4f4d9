"""The review loop through a real `python -m service` (uvicorn) with real image uploads: what is enqueued,
the reviewer routes and their guards, a store that fails, two processes sharing one PostgreSQL queue."""

from __future__ import annotations

import base64
import math
import threading
import time

import httpx
import pytest

from review import ReviewStore
from tests.review import postgres

from .serving import image_bytes, running_server, tiny_env

TOKEN = "reviewer-secret"
OTHER_TOKEN = "-".join(["admin", "token", "for", "tests"])  # the admin token, distinct from the reviewer's
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def metric(text: str, name: str) -> float:
    """Sum of a metric's samples in Prometheus text (all label sets)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {"))


def wait_for(fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.1)


def classify_many(client: httpx.Client, n: int, domain: str = "photo", seed: int = 0) -> list[dict]:
    """n fresh images through /classify/batch (64 per request); the answers."""
    out = []
    for start in range(0, n, 64):
        items = [{"image": base64.b64encode(image_bytes("jpeg" if i % 2 else "png", seed=seed + i)).decode(),
                  "domain": domain} for i in range(start, min(n, start + 64))]
        r = client.post("/classify/batch", json={"items": items})
        assert r.status_code == 200, r.text
        out += [x["result"] for x in r.json()["results"]]
    return out


def test_needs_review_and_audit_items_land_in_the_queue(tiny_model, tiny_store, tmp_path):
    db = tmp_path / "review.sqlite3"
    rate = 0.3
    env = tiny_env(tiny_model, tiny_store.root, MODERATION_REVIEW_DB=f"sqlite:///{db}",
                   MODERATION_REVIEW_AUDIT_RATE=str(rate), MODERATION_REVIEWER_TOKEN=TOKEN,
                   MODERATION_MAX_BATCH_ITEMS="64")
    with running_server(env) as srv, srv.client() as c:
        r = c.post("/classify", files={"image": ("a.png", image_bytes("png", seed=999), "image/png")},
                   data={"domain": "sketch"})
        assert r.status_code == 200
        answers = classify_many(c, 300) + [r.json()]
        queued = [a for a in answers if "review_id" in a]
        review = [a for a in answers if a["needs_review"]]
        others = [a for a in answers if not a["needs_review"]]
        assert all("review_id" in a for a in review)  # every needs_review answer has its item
        store = ReviewStore(f"sqlite:///{db}")
        assert wait_for(lambda: sum(store.pending_counts().values()) == len(queued))
        items = {i["id"]: i for i in store.list(limit=1000)}
        assert set(items) == {a["review_id"] for a in queued}
        for a in review:
            assert items[a["review_id"]]["reason"] == "needs_review"
        audits = [i for i in items.values() if i["reason"] == "audit"]
        assert all(not i["answer"]["needs_review"] for i in audits)
        n, k = len(others), len(audits)  # audit count ~ Binomial(n, rate): within 4 standard deviations
        assert abs(k - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate)), (k, n)
        assert {i["answer"]["review_id"] for i in items.values()} == set(items)  # the answer as returned
        m = c.get("/metrics").text
        assert metric(m, "moderation_review_enqueued_total") == len(queued)
        assert metric(m, "moderation_review_dropped_total") == 0
        assert wait_for(lambda: metric(c.get("/metrics").text, "moderation_review_pending") == len(queued))

        # the routes: a reviewer claims, looks at the image, decides; stats follow
        one = c.post("/review/claim", params={"reviewer": "ana", "limit": 2, "domain": "photo"}, headers=AUTH)
        assert one.status_code == 200 and len(one.json()["items"]) == 2
        first, second = one.json()["items"]
        img = c.get(f"/review/items/{first['id']}/image", headers=AUTH)
        assert img.status_code == 200 and img.headers["x-content-type-options"] == "nosniff"
        assert img.headers["content-type"] == first["content_type"] in ("image/jpeg", "image/png")
        assert "default-src 'none'" in img.headers["content-security-policy"]
        assert img.content.startswith(b"\xff\xd8" if first["content_type"] == "image/jpeg" else b"\x89PNG")
        body = {"label": "weapon", "unsafe": True, "reviewer": "ana"}
        v = c.post(f"/review/items/{first['id']}/verdict", json=body, headers=AUTH)
        assert v.status_code == 200 and v.json()["verdict"]["label"] == "weapon"
        assert c.post(f"/review/items/{first['id']}/verdict", json=body, headers=AUTH).status_code == 409
        bad = c.post(f"/review/items/{second['id']}/verdict", json={**body, "label": "nudity"}, headers=AUTH)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_label"
        assert "weapon" in bad.json()["error"]["message"]
        assert c.post("/review/items/nope/verdict", json=body, headers=AUTH).json()["error"]["code"] == "not_found"
        assert c.post(f"/review/items/{second['id']}/verdict", json={**body, "label": None, "unsafe": False},
                      headers=AUTH).status_code == 200
        undone = c.delete(f"/review/items/{second['id']}/verdict", params={"reviewer": "bo"}, headers=AUTH)
        assert undone.status_code == 409 and undone.json()["error"]["code"] == "not_undoable"
        undone = c.delete(f"/review/items/{second['id']}/verdict", params={"reviewer": "ana"}, headers=AUTH)
        assert undone.status_code == 200 and undone.json()["verdict"] is None
        decided = c.get("/review/items", params={"status": "decided"}, headers=AUTH).json()["items"]
        assert [i["id"] for i in decided] == [first["id"]]
        stats = c.get("/review/stats", headers=AUTH).json()["domains"]
        assert stats["photo"]["decided"] == 1 and stats["photo"]["pending"] == sum(a["domain"] == "photo" for a in queued) - 1
        assert set(stats["photo"]["audit"]) == {"n", "false_flag", "miss"}
        assert set(stats["photo"]["audit"]["miss"]) == {"rate", "lo", "hi"}
        pending = c.get("/review/items", params={"status": "pending", "reason": "needs_review", "limit": 500},
                        headers=AUTH).json()["items"]
        assert all(i["reason"] == "needs_review" for i in pending)
        store.close()


DATA_ROUTES = [("GET", "/review/items"), ("POST", "/review/claim"), ("GET", "/review/items/x"),
               ("GET", "/review/items/x/image"), ("POST", "/review/items/x/verdict"),
               ("DELETE", "/review/items/x/verdict?reviewer=a"), ("GET", "/review/stats")]


def test_every_data_route_needs_the_reviewer_token(tiny_model, tiny_store, tmp_path):
    db = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    body = {"label": None, "unsafe": False, "reviewer": "a"}
    admin = {"MODERATION_ADMIN_TOKEN": OTHER_TOKEN}
    with running_server(tiny_env(tiny_model, tiny_store.root, MODERATION_REVIEW_DB=db, **admin)) as srv, \
            srv.client() as c:
        for method, path in DATA_ROUTES:  # no reviewer token configured: disabled
            r = c.request(method, path, json=body, headers=AUTH)
            assert r.status_code == 403 and r.json()["error"]["code"] == "review_disabled", (method, path)
        page = c.get("/review")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert "<script src=\"/review/static/review.js\"" in page.text and "http" not in page.text.split("<body")[0]
        assert c.get("/review/static/review.js").headers["content-type"].startswith("text/javascript")
    env = tiny_env(tiny_model, tiny_store.root, MODERATION_REVIEW_DB=db, MODERATION_REVIEWER_TOKEN=TOKEN, **admin)
    with running_server(env) as srv, srv.client() as c:
        for method, path in DATA_ROUTES:
            for headers in ({}, {"Authorization": "Bearer admin"}, {"Authorization": "Bearer wrong"}):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (method, path, headers)
            assert c.request(method, path, json=body, headers=AUTH).status_code != 401
        assert c.post("/admin/reload", headers=AUTH).status_code == 401  # and the reviewer token is not admin's


@pytest.mark.parametrize("db", ["sqlite:////proc/no/such/dir/review.sqlite3",
                                "postgresql://nobody@127.0.0.1:1/review"])
def test_a_failing_store_never_fails_a_request(tiny_model, tiny_store, db):
    env = tiny_env(tiny_model, tiny_store.root, MODERATION_REVIEW_DB=db, MODERATION_REVIEW_AUDIT_RATE="1",
                   MODERATION_REVIEWER_TOKEN=TOKEN)
    with running_server(env) as srv, srv.client() as c:
        for i in range(5):
            r = c.post("/classify", files={"image": ("a.jpg", image_bytes("jpeg", seed=i), "image/jpeg")},
                       data={"domain": "photo"})
            assert r.status_code == 200 and "review_id" in r.json()
        assert wait_for(lambda: metric(c.get("/metrics").text, "moderation_review_dropped_total") == 5)
        assert metric(c.get("/metrics").text, "moderation_review_enqueued_total") == 0
        r = c.get("/review/stats", headers=AUTH)
        assert r.status_code == 503 and r.json()["error"]["code"] == "review_unavailable"
        assert c.get("/readyz").status_code == 200
    assert "review items are dropped" in srv.log()


def test_off_disables_the_queue(tiny_model, tiny_store):
    env = tiny_env(tiny_model, tiny_store.root, MODERATION_REVIEW_DB="off", MODERATION_REVIEW_AUDIT_RATE="1",
                   MODERATION_REVIEWER_TOKEN=TOKEN)
    with running_server(env) as srv, srv.client() as c:
        r = c.post("/classify", files={"image": ("a.jpg", image_bytes("jpeg"), "image/jpeg")}, data={"domain": "photo"})
        assert r.status_code == 200 and "review_id" not in r.json()
        assert c.get("/review/items", headers=AUTH).json()["error"]["code"] == "review_unavailable"


@pytest.fixture(scope="module")
def pg_server():
    with postgres.cluster() as url:
        yield url


def test_two_service_processes_share_one_postgresql_queue(tiny_model, tiny_store, pg_server):
    url = postgres.fresh_database(pg_server)
    env = tiny_env(tiny_model, tiny_store.root, MODERATION_REVIEW_DB=url, MODERATION_REVIEW_AUDIT_RATE="1",
                   MODERATION_REVIEWER_TOKEN=TOKEN, MODERATION_REVIEW_OUT_OF_SCOPE="true")
    with running_server(env) as a, running_server(env) as b, a.client() as ca, b.client() as cb:
        sent = classify_many(ca, 40, seed=0) + classify_many(cb, 40, seed=1000)
        ids = {x["review_id"] for x in sent}
        assert len(ids) == 80
        store = ReviewStore(url)
        assert wait_for(lambda: sum(store.pending_counts().values()) == 80)
        got: list[str] = []
        lock = threading.Lock()

        def reviewer(client: httpx.Client, name: str):
            while True:
                r = client.post("/review/claim", params={"reviewer": name, "limit": 3}, headers=AUTH)
                assert r.status_code == 200, r.text
                batch = [i["id"] for i in r.json()["items"]]
                assert len(batch) <= 3
                if not batch:
                    return
                with lock:
                    got.extend(batch)

        clients = [a.client(), b.client(), a.client(), b.client()]
        threads = [threading.Thread(target=reviewer, args=(cl, f"r{k}")) for k, cl in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for cl in clients:
            cl.close()
        assert len(got) == 80 and set(got) == ids  # every item claimed exactly once, across both processes
        assert store.schema_version() == 2
        store.close()


def test_review_reason_order():
    from service.pipeline import review_reason, sniff_content_type

    oos = {"out_of_scope": True, "needs_review": True, "flagged": False}
    assert review_reason(oos, True, 0.0) == "out_of_scope"
    assert review_reason({**oos, "needs_review": False}, False, 0.0) is None
    assert review_reason({"out_of_scope": False, "needs_review": True}, True, 0.0) == "needs_review"
    assert review_reason({"out_of_scope": False, "needs_review": False, "flagged": True}, False, 1.0) == "audit"
    assert review_reason({"out_of_scope": False, "needs_review": False}, False, 0.0) is None
    for kind, ct in (("jpeg", "image/jpeg"), ("png", "image/png"), ("webp", "image/webp"), ("gif", "image/gif"),
                     ("bmp", "image/bmp")):
        assert sniff_content_type(image_bytes(kind)) == ct
