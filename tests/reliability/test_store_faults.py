"""Store faults under traffic (issue 6 deliverable 3).

Each fault is injected into the live store, then `/admin/reload` runs: the broken bundle is
refused with a clear report (domain, version, kind, message; also in the server log), the
previous version keeps serving, and background traffic on every domain never sees a failure.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from promptclip import PromptStore
from tests.reliability.conftest import ADMIN_TOKEN, REFERENCE, admin_headers, classify
from tests.service.serving import make_store, make_tiny_model, publish, running_server, tiny_env

DOMAINS = ("photo", "sketch", "comic")


class Traffic:
    """Background /classify requests over every domain, recording each status and bundle version."""

    def __init__(self, client_factory, threads: int = 2):
        self.stop = threading.Event()
        self.results: list[tuple[int, str, str]] = []  # status, domain, version or error text
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self._run, args=(client_factory, i), daemon=True)
                        for i in range(threads)]

    def _run(self, client_factory, k: int) -> None:
        with client_factory() as c:
            i = k
            while not self.stop.is_set():
                d = DOMAINS[i % len(DOMAINS)]
                i += 1
                try:
                    r = classify(c, REFERENCE, d)
                    rec = (r.status_code, d, r.json()["bundle"]["version"] if r.status_code == 200 else r.text)
                except Exception as e:  # a transport error is a failed request too
                    rec = (-1, d, repr(e))
                with self.lock:
                    self.results.append(rec)
                self.stop.wait(0.01)

    def settle(self, n: int = 12, timeout: float = 30.0) -> None:
        """Let `n` more requests run against the current state of the store."""
        with self.lock:
            goal = len(self.results) + n
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.results) >= goal:
                    return
            time.sleep(0.01)
        raise TimeoutError("background traffic stalled")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture(scope="module")
def env(tmp_path_factory, rel_model):
    root = tmp_path_factory.mktemp("rel-faults")
    store = make_store(root / "store", rel_model.clip)
    scratch = PromptStore(root / "scratch")  # valid bundles are built here, then damaged into the store
    other = make_tiny_model(root / "other-model", seed=1)  # same architecture, other weights
    e = tiny_env(rel_model, root / "store", MODERATION_ADMIN_TOKEN=ADMIN_TOKEN)
    with running_server(e) as srv, srv.client() as client, Traffic(srv.client) as traffic:
        yield {"srv": srv, "client": client, "store": store, "scratch": scratch, "other": other,
               "traffic": traffic, "root": root, "clip": rel_model.clip}


def write_current(store: PromptStore, domain: str, text: str) -> None:
    path = store.root / domain / "CURRENT"
    tmp = path.with_name(".CURRENT.test")
    tmp.write_text(text)
    os.replace(tmp, path)


def reload(client) -> dict:
    r = client.post("/admin/reload", headers=admin_headers())
    assert r.status_code == 200, r.text
    return r.json()


def served(client) -> dict[str, str]:
    r = client.get("/domains")
    assert r.status_code == 200
    return {d["domain"]: d["version"] for d in r.json()["domains"]}


def expect_refused(env, domain: str, version: str, kind: str, words: tuple[str, ...] = ()) -> dict:
    """Reload; the fault is refused and reported; the previous version keeps serving and answering."""
    client = env["client"]
    before = served(client)
    report = reload(client)
    assert report["ok"] is False, report
    hits = [r for r in report["refused"] if r["domain"] == domain]
    assert hits, report
    hit = hits[0]
    assert hit["kind"] == kind, hit
    assert hit["version"] == version, hit
    for w in words:
        assert w in hit["message"], hit
    assert served(client) == before, "the previous bundle must keep serving"
    assert report["domains"] == before
    if domain in before:
        r = classify(client, REFERENCE, domain)
        assert r.status_code == 200 and r.json()["bundle"]["version"] == before[domain], r.text
    assert f"refused bundle {domain}@{version}" in env["srv"].log()
    env["traffic"].settle()  # requests keep flowing while the fault sits in the store
    return hit


def restore(env, domain: str) -> None:
    write_current(env["store"], domain, "v0001\n")
    report = reload(env["client"])
    assert report["ok"] is True, report
    assert served(env["client"])[domain] == "v0001"


def place(env, domain: str, version: str, data: bytes) -> Path:
    path = env["store"].root / domain / f"{version}.safetensors"
    path.write_bytes(data)
    write_current(env["store"], domain, version + "\n")
    return path


def valid_bytes(env, domain: str, version: str, clip=None) -> bytes:
    return Path(publish(env["scratch"], clip or env["clip"], domain, version, seed=7)).read_bytes()


def test_corrupt_file(env):
    place(env, "photo", "v0002", os.urandom(4096))
    expect_refused(env, "photo", "v0002", "corrupt", ("v0002.safetensors",))
    restore(env, "photo")


def test_truncated_file(env):
    data = valid_bytes(env, "photo", "v0003")
    place(env, "photo", "v0003", data[: len(data) // 2])
    expect_refused(env, "photo", "v0003", "corrupt")
    restore(env, "photo")


def test_manifest_for_another_base_model(env):
    place(env, "sketch", "v0002", valid_bytes(env, "sketch", "v0002", clip=env["other"].clip))
    expect_refused(env, "sketch", "v0002", "base_model", ("weights",))
    restore(env, "sketch")


def test_checksum_mismatch(env):
    data = bytearray(valid_bytes(env, "comic", "v0002"))
    data[-3] ^= 0xFF  # a tensor byte, the header is intact
    place(env, "comic", "v0002", bytes(data))
    expect_refused(env, "comic", "v0002", "checksum", ("sha256",))
    restore(env, "comic")


def test_file_stem_differs_from_manifest_version(env):
    place(env, "comic", "v0003", valid_bytes(env, "comic", "v0009"))
    expect_refused(env, "comic", "v0003", "stem", ("v0009",))
    restore(env, "comic")


def test_current_names_missing_version(env):
    write_current(env["store"], "photo", "v0099\n")
    expect_refused(env, "photo", "v0099", "missing", ("v0099",))
    restore(env, "photo")


def test_current_with_path_characters_is_refused(env):
    # an operator's typo or a hostile CURRENT must never become a path outside the store
    outside = env["root"] / "outside.safetensors"
    outside.write_bytes(valid_bytes(env, "photo", "outside"))
    write_current(env["store"], "photo", "../../outside\n")
    hit = expect_refused(env, "photo", "../../outside", "ValueError")
    assert "bad domain/version" in hit["message"]
    restore(env, "photo")


def test_store_directory_disappears(env):
    root = env["store"].root
    gone = root.with_name("store-gone")
    before = served(env["client"])
    root.rename(gone)
    try:
        report = reload(env["client"])
        assert report["ok"] is False
        assert any(r["domain"] == "*" and r["kind"] == "missing" for r in report["refused"]), report
        assert {r["domain"] for r in report["refused"]} >= set(DOMAINS), "every domain reported"
        assert served(env["client"]) == before
        for d in DOMAINS:
            assert classify(env["client"], REFERENCE, d).status_code == 200
        assert env["client"].get("/readyz").status_code == 200
        env["traffic"].settle()
    finally:
        gone.rename(root)
    assert reload(env["client"])["ok"] is True


def test_concurrent_reloads_swap_once(env):
    publish(env["store"], env["clip"], "photo", "v0010", seed=3)
    with ThreadPoolExecutor(8) as pool:
        reports = list(pool.map(lambda _: reload(env["client"]), range(8)))
    loaded = [x for r in reports for x in r["loaded"] if x["domain"] == "photo"]
    assert len(loaded) == 1 and loaded[0]["version"] == "v0010", reports
    assert all(r["ok"] for r in reports), reports
    assert served(env["client"])["photo"] == "v0010"
    r = classify(env["client"], REFERENCE, "photo")
    assert r.status_code == 200 and r.json()["bundle"]["version"] == "v0010"
    env["traffic"].settle(24)
    restore(env, "photo")  # back to v0001: a rollback is a reload too


def test_no_request_failed_during_faults(env):
    traffic: Traffic = env["traffic"]
    traffic.stop.set()
    for t in traffic.threads:
        t.join(30)
    results = list(traffic.results)
    failed = [r for r in results if r[0] != 200]
    print(f"\nstore faults: {len(results)} background requests, {len(failed)} failed, "
          f"{time.monotonic() - traffic.t0:.1f} s")
    assert len(results) >= 20, f"too little background traffic ({len(results)})"
    assert not failed, failed[:5]
    versions = {(d, v) for _, d, v in results}
    assert ("photo", "v0010") in versions, "traffic saw the hot-swapped version"
