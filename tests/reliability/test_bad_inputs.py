"""The bad-input matrix through a real uvicorn process (DESIGN §6 errors, issue 6 deliverable 1).

Each kind gets its documented answer (a 4xx JSON error, or 200 for accepted variants whose pixels
must equal what a careful decoder sees); after each one the server is still ready and a normal
request still gets exactly the reference scores.
"""

from __future__ import annotations

import contextlib
import math

import httpx
import pytest

from tests.reliability.badinputs import Case, Limits, build_matrix, write_payloads
from tests.reliability.conftest import REFERENCE, assert_error, classify, scores
from tests.reliability.loadgen import chunked_upload

MATRIX = {c.name: c for c in build_matrix(Limits())}


@pytest.fixture(scope="module")
def client(main_server):
    with main_server.client(timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def baseline(client) -> dict[str, float]:
    r = classify(client, REFERENCE)
    assert r.status_code == 200, r.text
    return scores(r)


@pytest.fixture(scope="module")
def payload_files(tmp_path_factory):
    return write_payloads(list(MATRIX.values()), tmp_path_factory.mktemp("payloads"))


def send(client: httpx.Client, case: Case, files) -> httpx.Response:
    """Send `case`, uploading its payloads from the real files written for it."""
    if case.transport in ("multipart", "batch"):
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(open(p, "rb")) for p in files]
            parts = [(field, (p.name, h, "application/octet-stream"))
                     for (field, _), p, h in zip(case.files, files, handles, strict=True)]
            return client.post(case.path, files=parts, data=case.data)
    if case.transport in ("json", "batch_json"):
        return client.post(case.path, json=case.json)
    return client.request(case.method, case.path, content=case.content or None, headers=case.headers)


def test_matrix_is_large_enough():
    bad = [c for c in MATRIX.values() if c.status >= 400]
    assert len(MATRIX) >= 20 and len(bad) >= 20, (len(MATRIX), len(bad))


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=c.known_failure)) if c.known_failure else n
    for n, c in MATRIX.items()])
def test_bad_input(name, client, baseline, payload_files):
    case = MATRIX[name]
    resp = send(client, case, payload_files[name])
    if case.status >= 400:
        err = assert_error(resp, case.status, case.codes)
        assert len(err["message"]) < 1000, "error messages stay short (no echoed payloads)"
    else:
        assert resp.status_code == 200, resp.text[:400]
        body = resp.json()
        if case.item_statuses is not None:
            got = [r["status"] for r in body["results"]]
            assert got == case.item_statuses, body
            for r in body["results"]:
                assert (r["result"] is None) == (r["status"] != 200)
                if r["status"] != 200:
                    assert r["error"]["code"] and r["error"]["message"]
        else:
            assert abs(sum(lab["probability"] for lab in body["labels"]) - 1.0) < 1e-4
            assert all(math.isfinite(lab["score"]) for lab in body["labels"])
        if case.same_as is not None:
            want = scores(classify(client, case.same_as))
            got = scores(resp)
            assert got.keys() == want.keys()
            for k in want:
                assert got[k] == pytest.approx(want[k], abs=1e-5), (k, got, want)
        if case.differs_from is not None:
            other = scores(classify(client, case.differs_from))
            assert max(abs(other[k] - scores(resp)[k]) for k in other) > 1e-4, "orientation was ignored"
    # the server shrugged it off: still ready, and a normal request is still exactly right
    assert client.get("/readyz").status_code == 200
    again = classify(client, REFERENCE)
    assert again.status_code == 200
    for k, v in baseline.items():
        assert scores(again)[k] == pytest.approx(v, abs=1e-6)


@pytest.mark.parametrize("path", ["/classify", "/classify/batch"])
@pytest.mark.parametrize("content_type", ["multipart", "json"])
def test_chunked_body_over_the_limit_is_cut_off_while_reading(main_server, client, baseline, content_type, path):
    """No Content-Length to check up front: the byte limit must hold while the body streams in."""
    total = 64 * 1024 * 1024
    status, raw, sent = chunked_upload(main_server.url, total, path=path, content_type=content_type)
    assert status == 413, raw[-300:]
    assert sent < total // 4, f"the server read {sent} of {total} bytes before refusing"
    assert client.get("/readyz").status_code == 200
    assert scores(classify(client, REFERENCE)) == pytest.approx(baseline, abs=1e-6)
