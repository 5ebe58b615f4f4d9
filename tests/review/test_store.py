"""The review store on SQLite and PostgreSQL: queue, claims (threads and processes), verdicts, undo,
retention, the schema upgrade from version 1, stats."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from review import NewItem, ReviewError, ReviewStore, ReviewWriter, wilson
from review.schema import items as items_table
from tests.service.serving import REPO


def answer(flagged=False, review=False, top="cat", oos=False) -> dict:
    return {"domain": "photo", "top_label": None if oos else top, "flagged": flagged, "needs_review": review,
            "out_of_scope": oos, "labels": [{"label": "cat", "probability": 0.7, "unsafe": False},
                                            {"label": "weapon", "probability": 0.2, "unsafe": True}]}


def new(n: int, reason="needs_review", domain="photo", t0=1_000.0, image=None, **kw) -> list[NewItem]:
    return [NewItem(str(uuid.uuid4()), image or f"image-{i}".encode(), "image/png", domain, "v0001", reason,
                    answer(**kw), t0 + i) for i in range(n)]


def test_items_round_trip_and_images_are_content_addressed(store):
    a = new(3, image=b"same bytes") + new(2, reason="audit", domain="sketch")
    assert store.add(a) == 5
    with store.engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM review_images")).scalar() == 3  # one copy of "same bytes"
    assert store.pending_counts() == {"photo": 3, "sketch": 2}
    got = store.get(a[0].id)
    assert got["answer"] == a[0].answer and got["reason"] == "needs_review" and got["verdict"] is None
    assert got["content_type"] == "image/png" and got["created_at"].startswith("1970-01-01T00:16:40")
    assert store.image(a[4].id) == (b"image-1", "image/png")
    assert [i["id"] for i in store.list("pending", domain="photo")] == [x.id for x in a[:3]]  # oldest first
    assert [i["id"] for i in store.list("pending", reason="audit")] == [x.id for x in a[3:]]
    assert store.list("decided") == []
    with pytest.raises(ReviewError) as e:
        store.get("nope")
    assert e.value.kind == "not_found"


def test_two_claims_never_return_the_same_item_threads(store):
    store.add(new(60))
    got: list[str] = []
    by: dict[str, list[str]] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def reviewer(name):
        barrier.wait()
        while True:
            batch = store.claim(name, limit=3)
            if not batch:
                return
            assert len(batch) <= 3
            with lock:
                got.extend(i["id"] for i in batch)
                by[name] = by.get(name, []) + [i["id"] for i in batch]

    threads = [threading.Thread(target=reviewer, args=(f"r{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 60 and len(set(got)) == 60
    assert sum(len(v) > 0 for v in by.values()) >= 2  # they did run side by side


CLAIMER = """
import json, sys, time
from review import ReviewStore
store = ReviewStore(sys.argv[1])
store.pending_counts()  # connected before the start
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
got = []
while True:
    batch = store.claim(sys.argv[3], limit=2)
    if not batch:
        break
    assert len(batch) <= 2, len(batch)
    got += [i["id"] for i in batch]
print(json.dumps(got))
"""


def test_two_claims_never_return_the_same_item_processes(store, store_url):
    store.add(new(200))
    start = time.time() + 4.0  # the processes import and connect first, then claim together
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, store_url, str(start), f"p{k}"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    got = [i for out, _ in outs for i in json.loads(out)]
    assert len(got) == 200 and len(set(got)) == 200
    assert sum(bool(json.loads(out)) for out, _ in outs) >= 2  # they did run side by side


def test_a_claim_expires_and_filters_by_domain(store):
    a = new(2) + new(1, domain="sketch", t0=0.0)
    store.add(a)
    now = 10_000.0
    first = store.claim("ana", domain="photo", limit=5, now=now)
    assert [i["id"] for i in first] == [a[0].id, a[1].id] and first[0]["claim"]["reviewer"] == "ana"
    assert store.claim("bo", domain="photo", now=now + 1) == []  # held by ana
    again = store.claim("bo", domain="photo", limit=5, now=now + store.claim_s + 1)  # ana's claim expired
    assert [i["id"] for i in again] == [a[0].id, a[1].id]
    assert [i["id"] for i in store.claim("bo", now=now)] == [a[2].id]


def test_verdicts_undo_and_conflicts(store):
    a = new(2)
    store.add(a)
    item = store.decide(a[0].id, "weapon", True, "ana", now=5_000.0)
    assert item["verdict"]["label"] == "weapon" and item["verdict"]["unsafe"] is True
    assert item["verdict"]["reviewer"] == "ana" and item["claim"] is None
    with pytest.raises(ReviewError) as e:
        store.decide(a[0].id, None, False, "bo")
    assert e.value.kind == "already_decided"
    with pytest.raises(ReviewError) as e:
        store.decide("nope", None, False, "bo")
    assert e.value.kind == "not_found"
    for who, when, why in (("bo", 5_001.0, "not 'bo'"), ("ana", 5_000.0 + store.undo_s + 1, "older than")):
        with pytest.raises(ReviewError) as e:
            store.undo(a[0].id, who, now=when)
        assert e.value.kind == "not_undoable" and why in str(e.value)
    with pytest.raises(ReviewError) as e:
        store.undo(a[1].id, "ana")
    assert e.value.kind == "not_undoable" and "no verdict" in str(e.value)
    back = store.undo(a[0].id, "ana", now=5_010.0)
    assert back["verdict"] is None and back["claim"]["reviewer"] == "ana"
    assert store.claim("bo", now=5_011.0)[0]["id"] == a[1].id  # the undone item stays with ana
    assert [i["id"] for i in store.list("decided")] == []
    store.decide(a[0].id, None, False, "ana", now=5_020.0)
    assert store.list("decided")[0]["verdict"] == {"label": None, "unsafe": False, "reviewer": "ana",
                                                   "decided_at": "1970-01-01T01:23:40+00:00"}


def test_retention_purges_images_after_their_verdict(store):
    shared = new(2, image=b"shared")
    alone = new(1, image=b"alone")
    store.add(shared + alone)
    day = 86400.0
    store.decide(alone[0].id, None, False, "ana", now=0.0)
    store.decide(shared[0].id, None, False, "ana", now=0.0)
    assert store.purge(now=29 * day) == 0  # within retention
    assert store.purge(now=31 * day) == 1  # "shared" still has a pending item: kept
    with pytest.raises(ReviewError) as e:
        store.image(alone[0].id)
    assert e.value.kind == "image_purged"
    assert store.get(alone[0].id)["image_available"] is False
    assert store.image(shared[1].id)[0] == b"shared"
    store.add(new(1, image=b"alone"))  # the same image sent again gets its bytes back
    assert store.image(alone[0].id)[0] == b"alone"


def test_upgrade_from_schema_version_1(store_url):
    store = ReviewStore(store_url)
    assert store.migrate(target=1) == [1] and store.schema_version() == 1
    with store.engine.begin() as c:  # rows as version 1 wrote them (no decision columns)
        assert "model_flagged" not in {col["name"] for col in sa.inspect(c).get_columns("review_items")}
        c.execute(sa.text("INSERT INTO review_images (sha256, content_type, size, data, created_at) "
                          "VALUES ('ab', 'image/png', 3, :d, 1.0)"), {"d": b"abc"})
        for i, (a, decided) in enumerate([(answer(flagged=True, top="weapon"), True), (answer(review=True), False),
                                          (answer(oos=True), True)]):
            c.execute(sa.text("INSERT INTO review_items (id, image_sha256, domain, version, reason, answer, "
                              "created_at, decided_at, verdict_label, verdict_unsafe, reviewer) VALUES "
                              "(:id, 'ab', 'photo', 'v1', 'audit', :a, :t, :dec, NULL, :u, 'ana')"),
                      {"id": f"i{i}", "a": json.dumps(a), "t": float(i), "dec": 5.0 if decided else None,
                       "u": False})
    assert store.migrate() == [2] and store.schema_version() == 2 and store.migrate() == []
    with store.engine.connect() as c:
        rows = {r.id: r for r in c.execute(sa.select(items_table))}
        assert {idx["name"] for idx in sa.inspect(c).get_indexes("review_items")} >= {"ix_review_items_pending"}
    assert (rows["i0"].model_label, rows["i0"].model_flagged, rows["i0"].model_review) == ("weapon", True, False)
    assert (rows["i1"].model_label, rows["i1"].model_flagged, rows["i1"].model_review) == ("cat", False, True)
    assert rows["i2"].model_label is None
    s = store.stats()["domains"]["photo"]
    assert s["pending"] == 1 and s["decided"] == 2 and s["audit"]["n"] == 2
    assert s["audit"]["false_flag"]["rate"] == 0.5  # i0 flagged, judged benign
    store.add(new(1))  # version-2 writes work on the upgraded schema
    store.close()


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = ReviewStore(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    store.migrate()
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_stats_audit_estimates_and_agreement(store):
    audit = (new(6, reason="audit", flagged=True, top="weapon") + new(10, reason="audit", t0=2_000.0)
             + new(4, reason="audit", t0=3_000.0, review=True))
    review = new(3, reason="needs_review", t0=4_000.0)
    store.add(audit + review)
    for it in audit[:2]:  # flagged, benign: false flags
        store.decide(it.id, "cat", False, "ana")
    for it in audit[2:6]:  # flagged, unsafe: right
        store.decide(it.id, "weapon", True, "ana")
    for it in audit[6:9]:  # neither flagged nor sent to review, unsafe: misses
        store.decide(it.id, "weapon", True, "ana")
    for it in audit[9:16]:  # right
        store.decide(it.id, "cat", False, "ana")
    for it in audit[16:]:  # sent to review (not an audit miss) and unsafe
        store.decide(it.id, "weapon", True, "ana")
    store.decide(review[0].id, None, False, "ana")
    s = store.stats()["domains"]["photo"]
    assert s["pending"] == 2 and s["decided"] == 21
    assert s["audit"]["n"] == 20
    assert s["audit"]["false_flag"] == wilson(2, 20) and s["audit"]["miss"] == wilson(3, 20)
    # agreement: top_label == verdict label: audit[2:6] and audit[9:16] -> 11 of 21
    assert s["agreement"] == pytest.approx(11 / 21)
    assert s["labels"]["weapon"] == {"reviewer": 11, "model": 6, "both": 4, "recall": 4 / 11, "precision": 4 / 6}


def test_wilson_interval():
    w = wilson(5, 10)
    assert w["rate"] == 0.5 and w["lo"] == pytest.approx(0.2366, abs=1e-4) and w["hi"] == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 10)["lo"] == 0.0 and wilson(0, 10)["hi"] == pytest.approx(0.2775, abs=1e-4)
    assert wilson(0, 0) == {"rate": None, "lo": 0.0, "hi": 1.0}


# ------------------------------------------------------------------ the writer
def test_writer_batches_counts_and_drops_when_full_or_down(tmp_path):
    counts = {"enqueued": 0, "dropped": 0, "pending": None}

    def enq(reason, n):
        counts["enqueued"] += n

    def drop(n):
        counts["dropped"] += n

    def pend(n):
        counts["pending"] = n

    store = ReviewStore(f"sqlite:///{tmp_path / 'ok.sqlite3'}")
    w = ReviewWriter(store, max_queue=100, on_enqueued=enq, on_dropped=drop, on_pending=pend, refresh_s=0.05)
    for it in new(150):  # the thread has not started: 50 do not fit
        w.submit(it)
    assert counts["dropped"] == 50
    w.start()
    deadline = time.monotonic() + 20
    while counts["pending"] != 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts["enqueued"] == 100 and counts["pending"] == 100
    w.stop()
    store.close()

    dead = ReviewStore(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'r.sqlite3'}")
    counts.update(enqueued=0, dropped=0)
    w = ReviewWriter(dead, on_enqueued=enq, on_dropped=drop)
    w.start()
    for it in new(5):
        w.submit(it)
    w.stop()
    assert counts == {**counts, "enqueued": 0, "dropped": 5}
