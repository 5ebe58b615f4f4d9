"""In-process (TestClient) checks of the invariants: probabilities, order, flags, mixed batches, queue, timeout."""

from __future__ import annotations

import base64
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from promptclip.decisions import Banks, BatchScores, DecisionRule, DomainBank, decide_batch
from service import Settings, create_app
from service.registry import DomainEntry, LabelInfo
from service.scoring import build_result

from .serving import LABELS, image_bytes


def settings_for(model, store, **kw) -> Settings:
    return Settings(_env_file=None, model=str(model.config), pretrained=str(model.checkpoint),
                    store_dir=store.root, device="cpu", **kw)


@pytest.fixture(scope="module")
def client(tiny_model, tiny_store):
    with TestClient(create_app(settings_for(tiny_model, tiny_store, admin_token="secret"))) as c:
        yield c


def b64(kind="jpeg", seed=0) -> str:
    return base64.b64encode(image_bytes(kind, seed=seed)).decode()


def test_probabilities_sum_to_one_and_labels_sorted(client):
    for domain in LABELS:
        r = client.post("/classify", json={"image": b64(), "domain": domain})
        assert r.status_code == 200, r.text
        body = r.json()
        labels = body["labels"]
        assert [x["label"] for x in labels] != [] and {x["label"] for x in labels} == {lab.name for lab in LABELS[domain]}
        assert math.isclose(sum(x["softmax"] for x in labels), 1.0, abs_tol=1e-5)
        scores = [x["score"] for x in labels]
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
        assert body["top_label"] == labels[0]["label"]
        assert body["bundle"] == {"version": "v0001", "group": "g0"} and body["model"] == "svc-tiny"


def test_softmax_is_temperature_scaled_over_scores(client):
    body = client.post("/classify", json={"image": b64(), "domain": "sketch"}).json()
    scale = float(client.app.state.service.prompted.logit_scale)
    exps = [math.exp(scale * x["score"]) for x in body["labels"]]
    for x, e in zip(body["labels"], exps, strict=True):
        assert math.isclose(x["softmax"], e / sum(exps), rel_tol=1e-4)


def _entry(thresholds, unsafe):
    labels = tuple(LabelInfo(f"l{i}", f"p{i}", u, t) for i, (t, u) in enumerate(zip(thresholds, unsafe, strict=True)))
    rule = DecisionRule.from_manifest(labels, None)  # a bundle from before calibration: the legacy rule
    return DomainEntry("d", "v1", {"id": "g1"}, labels, {}, "", "", "", {}, (1, 1), None, None, rule, {})


def _result(e, scores, probs):
    """The answer for one image whose cosines and closed-set softmax are given, through the batched rule."""
    c = len(scores)
    banks = Banks.stack([DomainBank(torch.eye(c, 8), torch.zeros(0, 8), None, e.rule)])
    row = BatchScores(torch.tensor([scores]), torch.tensor([probs]), torch.tensor([[math.log(p) for p in probs]]),
                      torch.ones(1), torch.tensor([math.inf]), torch.tensor([c]))
    (d,) = decide_batch(row, torch.zeros(1, dtype=torch.long), banks, review_margin=0.1).answers(banks)
    return build_result(e, d, model="m", latency_ms=1)


def test_legacy_bundles_keep_the_old_flag_and_review_rule():
    e = _entry([0.5, 0.5, 0.5], [True, False, False])
    r = _result(e, [0.3, 0.2, 0.1], [0.55, 0.25, 0.2])
    assert r["flagged"] and not r["needs_review"] and r["labels"][0]["flagged"] and r["rule"] == "legacy"
    r = _result(e, [0.3, 0.2, 0.1], [0.45, 0.35, 0.2])
    assert not r["flagged"] and r["needs_review"]
    r = _result(e, [0.3, 0.2, 0.1], [0.39, 0.41, 0.2])
    assert not r["flagged"] and not r["needs_review"]
    # a safe label over its threshold flags nothing
    r = _result(e, [0.1, 0.3, 0.2], [0.1, 0.8, 0.1])
    assert not r["flagged"] and not r["needs_review"] and r["top_label"] == "l1" and not r["out_of_scope"]
    assert not any(x["flagged"] for x in r["labels"])
    # exactly at the threshold is flagged
    r = _result(e, [0.3, 0.2, 0.1], [0.5, 0.3, 0.2])
    assert r["flagged"] and r["bundle"] == {"version": "v1", "group": "g1"} and r["scope_score"] is None


def test_mixed_domain_batch_equals_single_requests(client):
    items = [("photo", "jpeg", 0), ("sketch", "png", 1), ("comic", "webp", 2), ("photo", "bmp", 3),
             ("comic", "gif", 4), ("sketch", "jpeg", 5)]
    calls = []
    engine = client.app.state.service.engine
    inner = engine.runner.encode

    def counting(images, prompts):
        calls.append((images.shape[0], tuple(prompts.shape[1:3])))
        return inner(images, prompts)

    engine.runner.encode = counting
    try:
        batch = client.post("/classify/batch", json={"items": [{"image": b64(k, s), "domain": d}
                                                               for d, k, s in items]}).json()
    finally:
        engine.runner.encode = inner
    # one forward per prompt shape: photo + sketch share (2+2 tokens), comic (1+4) is its own sub-batch
    assert sorted(calls) == sorted([(4, (2, 4)), (2, (2, 5))]), calls
    for (d, k, s), res in zip(items, batch["results"], strict=True):
        assert res["status"] == 200 and res["error"] is None
        single = client.post("/classify", json={"image": b64(k, s), "domain": d}).json()
        got = {x["label"]: x["score"] for x in res["result"]["labels"]}
        want = {x["label"]: x["score"] for x in single["labels"]}
        assert got.keys() == want.keys()
        assert all(abs(got[k_] - want[k_]) < 1e-5 for k_ in got), (got, want)


def test_batch_item_errors_fail_alone(client):
    r = client.post("/classify/batch", json={"items": [
        {"image": b64(), "domain": "photo"}, {"image": b64(), "domain": "nope"},
        {"image": "!!!", "domain": "photo"}, {"domain": "photo"},
        {"image": base64.b64encode(image_bytes("truncated")).decode(), "domain": "photo"}]})
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["status"] for x in res] == [200, 404, 400, 422, 400]
    assert [x["error"]["code"] for x in res[1:]] == ["unknown_domain", "invalid_base64", "validation_error",
                                                    "undecodable_image"]


def test_openapi_documents_errors_and_examples(client):
    spec = client.get("/openapi.json").json()
    ops = spec["paths"]
    for code in ("400", "404", "413", "415", "422", "503", "504"):
        assert code in ops["/classify"]["post"]["responses"], code
        assert code in ops["/classify/batch"]["post"]["responses"], code
    assert {"401", "403"} <= set(ops["/admin/reload"]["post"]["responses"])
    body = ops["/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "examples" in spec["components"]["schemas"]["ClassifyResponse"]


def test_admin_disabled_without_token(tiny_model, tiny_store):
    with TestClient(create_app(settings_for(tiny_model, tiny_store))) as c:
        r = c.post("/admin/reload", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_queue_full_gives_503_with_retry_after_and_timeout_gives_504(tiny_model, tiny_store):
    s = settings_for(tiny_model, tiny_store, max_queue=1, max_batch=1, request_timeout_s=1.0, retry_after_s=2)
    with TestClient(create_app(s)) as c:
        engine = c.app.state.service.engine
        gate = threading.Event()
        inner = engine._forward
        engine._forward = lambda batch: (gate.wait(10), inner(batch))[1]
        try:
            with ThreadPoolExecutor(4) as pool:
                futs = [pool.submit(c.post, "/classify", json={"image": b64(), "domain": "photo"}) for _ in range(4)]
                # one request sits in the blocked model, one fills the queue, the rest overflow (503);
                # the first two time out (504) without the model ever finishing
                results = [f.result(timeout=30) for f in futs]
        finally:
            gate.set()
            engine._forward = inner
        codes = sorted(r.status_code for r in results)
        assert codes.count(503) >= 1 and 504 in codes, codes
        full = next(r for r in results if r.status_code == 503)
        assert full.headers["retry-after"] == "2" and full.json()["error"]["code"] == "queue_full"
        timeout = next(r for r in results if r.status_code == 504)
        assert timeout.json()["error"]["code"] == "timeout"
        # and the server keeps serving once the blocked batch and the timed-out job have left the queue
        deadline = time.monotonic() + 10
        while engine.queue.qsize() or engine.in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.post("/classify", json={"image": b64(), "domain": "photo"}).status_code == 200


def test_failing_batch_reaches_every_request_and_server_keeps_serving(client):
    engine = client.app.state.service.engine
    inner = engine.runner.encode

    def broken(images, prompts):
        raise RuntimeError("boom")

    engine.runner.encode = broken
    try:
        r = client.post("/classify/batch", json={"items": [{"image": b64(), "domain": "photo"}] * 3})
    finally:
        engine.runner.encode = inner
    assert [x["status"] for x in r.json()["results"]] == [500] * 3
    assert all(x["error"]["code"] == "inference_failed" for x in r.json()["results"])
    assert "boom" not in r.text and "Traceback" not in r.text
    assert client.post("/classify", json={"image": b64(), "domain": "photo"}).status_code == 200


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MODERATION_MAX_BATCH", "7")
    monkeypatch.setenv("MODERATION_REVIEW_MARGIN", "0.2")
    monkeypatch.setenv("MODERATION_ADMIN_TOKEN", "s3cr3t-token")
    monkeypatch.setenv("MODERATION_PRETRAINED", "none")
    s = Settings(_env_file=None)
    assert (s.max_batch, s.review_margin, s.admin_token.get_secret_value(), s.pretrained) == (7, 0.2, "s3cr3t-token", None)
    assert "s3cr3t" not in repr(s)  # the token is a secret
    monkeypatch.delenv("MODERATION_PRETRAINED")
    d = Settings(_env_file=None)
    assert (d.model, d.pretrained, str(d.store_dir), d.port) == ("tiny-clip", "embedded", "prompts_store", 8000)



def test_a_lone_request_does_not_wait_for_company(tiny_model, tiny_store):
    """MAX_WAIT_MS only applies while other images are being decoded; a lone request runs at once."""
    with TestClient(create_app(settings_for(tiny_model, tiny_store, max_wait_ms=2000))) as c:
        for _ in range(3):
            t0 = time.perf_counter()
            r = c.post("/classify", json={"image": b64(), "domain": "photo"})
            assert r.status_code == 200 and time.perf_counter() - t0 < 1.5
        # concurrent images still share a forward pass
        items = [{"image": b64(seed=i), "domain": "photo"} for i in range(6)]
        engine = c.app.state.service.engine
        sizes, inner = [], engine.runner.encode
        engine.runner.encode = lambda x, p: (sizes.append(x.shape[0]), inner(x, p))[1]
        try:
            assert c.post("/classify/batch", json={"items": items}).status_code == 200
        finally:
            engine.runner.encode = inner
        assert sizes == [6]
