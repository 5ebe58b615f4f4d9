"""Domain routing: /classify and /classify/batch without a domain, the router's hot reload, low confidence."""

from __future__ import annotations

import base64
import shutil

import pytest
from fastapi.testclient import TestClient

from promptclip import PromptStore
from promptclip.router import ROUTER_DIR, load_router
from service import create_app

from .routed import domain_image, publish_router
from .serving import make_store
from .test_app import settings_for

DOMAINS = ["photo", "sketch", "comic"]
TOKEN = "route-admin"


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    st = make_store(tmp_path_factory.mktemp("routed") / "store", tiny_model.clip)
    publish_router(st, tiny_model.clip, DOMAINS)
    return st


@pytest.fixture(scope="module")
def client(tiny_model, store):
    with TestClient(create_app(settings_for(tiny_model, store, admin_token=TOKEN))) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_router_is_no_domain(store):
    assert store.domains() == sorted(DOMAINS) and (store.root / ROUTER_DIR / "CURRENT").read_text().strip() == "v0001"


@pytest.mark.parametrize("how", ["multipart-absent", "json-absent", "json-auto", "multipart-auto"])
def test_classify_without_a_domain_is_routed_and_says_so(client, how):
    for k, domain in enumerate(DOMAINS):
        img = domain_image(k, seed=100)
        if how.startswith("multipart"):
            data = {"domain": "auto"} if how.endswith("auto") else {}
            r = client.post("/classify", files={"image": ("x.png", img)}, data=data)
        else:
            r = client.post("/classify", json={"image": b64(img)} | ({"domain": "auto"} if how.endswith("auto") else {}))
        assert r.status_code == 200, r.text
        body = r.json()
        routing = body["routing"]
        assert body["domain"] == routing["domain"] == domain
        assert 0.5 < routing["confidence"] <= 1 and routing["low_confidence"] is False and routing["router"] == "v0001"
        assert routing["candidates"][0] == {"domain": domain, "probability": routing["confidence"]}
        # the routed answer is the explicit-domain answer, plus `routing`
        explicit = client.post("/classify", json={"image": b64(img), "domain": domain}).json()
        assert "routing" not in explicit
        assert [x["score"] for x in explicit["labels"]] == pytest.approx([x["score"] for x in body["labels"]], abs=1e-5)
        assert (explicit["flagged"], explicit["top_label"]) == (body["flagged"], body["top_label"])


def test_batch_mixes_routed_and_explicit_items(client):
    items = [{"image": b64(domain_image(0, 7))}, {"image": b64(domain_image(2, 7)), "domain": "photo"},
             {"image": b64(domain_image(1, 7)), "domain": "auto"}, {"domain": "comic"}]
    res = client.post("/classify/batch", json={"items": items}).json()["results"]
    assert [r["status"] for r in res] == [200, 200, 200, 422]
    assert [r["result"]["domain"] for r in res[:3]] == ["photo", "photo", "sketch"]
    assert "routing" in res[0]["result"] and "routing" not in res[1]["result"] and "routing" in res[2]["result"]
    files = [("images", (f"{k}.png", domain_image(k, 8))) for k in range(3)]
    res = client.post("/classify/batch", files=files).json()["results"]  # no `domains`: all routed
    assert [r["result"]["domain"] for r in res] == DOMAINS


def test_domains_lists_the_router(client):
    router = client.get("/domains").json()["router"]
    assert router["version"] == "v0001" and router["domains"] == DOMAINS and router["min_confidence"] == 0.5


def test_router_hot_reload_low_confidence_and_refusal(client, store, tiny_model):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # every route below min_confidence 1.0: routed images that are not flagged go to review
    publish_router(store, tiny_model.clip, DOMAINS, version="v0002", min_confidence=1.0)
    rep = client.post("/admin/reload", headers=auth).json()
    assert {"domain": ROUTER_DIR, "version": "v0002", "previous": "v0001"} in rep["loaded"]
    body = client.post("/classify", json={"image": b64(domain_image(1, 3))}).json()
    assert body["routing"]["router"] == "v0002" and body["routing"]["low_confidence"] is True
    assert body["needs_review"] is (not body["flagged"])
    explicit = client.post("/classify", json={"image": b64(domain_image(1, 3)), "domain": "sketch"}).json()
    assert explicit["flagged"] == body["flagged"]
    # a router trained for another CLIP is refused; v0002 keeps routing
    bad = load_router(store.router_path("v0002"))
    bad.manifest.version, bad.manifest.base_model = "v0003", {**bad.manifest.base_model, "weights": "sha256:other"}
    store.publish_router(bad)
    rep = client.post("/admin/reload", headers=auth).json()
    assert rep["ok"] is False and [(x["domain"], x["kind"]) for x in rep["refused"]] == [(ROUTER_DIR, "base_model")]
    assert client.post("/classify", json={"image": b64(domain_image(0, 3))}).json()["routing"]["router"] == "v0002"
    # the router's files vanish: it keeps serving the last one it loaded
    shutil.rmtree(store.root / ROUTER_DIR)
    rep = client.post("/admin/reload", headers=auth).json()
    assert [(x["domain"], x["kind"]) for x in rep["refused"]] == [(ROUTER_DIR, "missing")]
    assert client.post("/classify", json={"image": b64(domain_image(0, 3))}).status_code == 200


def test_without_a_router_the_domain_is_required(tiny_model, tmp_path):
    st = make_store(tmp_path / "store", tiny_model.clip)
    with TestClient(create_app(settings_for(tiny_model, st))) as c:
        r = c.post("/classify", json={"image": b64(domain_image(0))})
        assert r.status_code == 422 and "no domain router" in r.json()["error"]["message"]
        assert c.get("/domains").json()["router"] is None


def test_a_router_naming_unserved_domains_routes_among_the_served_ones(tiny_model, tmp_path):
    st = make_store(tmp_path / "store", tiny_model.clip)
    publish_router(st, tiny_model.clip, ["photo", "sketch", "gone"])
    with TestClient(create_app(settings_for(tiny_model, st))) as c:
        body = c.post("/classify", json={"image": b64(domain_image(2, 1))}).json()
        assert body["domain"] in {"photo", "sketch"} and {x["domain"] for x in body["routing"]["candidates"]} <= {
            "photo", "sketch"}
    assert PromptStore(st.root).domains() == sorted(DOMAINS)
