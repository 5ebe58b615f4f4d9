"""A real `python -m service` uvicorn process over HTTP with real image files: every endpoint and error."""

from __future__ import annotations

import base64

import httpx
import pytest

from .serving import LABELS, image_bytes, running_server, slow_multipart, tiny_env

TOKEN = "test-admin-token"
MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def server(tiny_model, tiny_store):
    env = tiny_env(tiny_model, tiny_store.root, MODERATION_ADMIN_TOKEN=TOKEN, MODERATION_MAX_IMAGE_BYTES=MAX_BYTES,
                   MODERATION_MAX_IMAGE_PIXELS=4_000_000, MODERATION_MAX_BATCH_ITEMS=8,
                   MODERATION_BODY_TIMEOUT_S=1.5)
    with running_server(env) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


def upload(http, data, domain="photo", name="img", ctype="application/octet-stream"):
    return http.post("/classify", files={"image": (name, data, ctype)}, data={"domain": domain})


def solid_png(w: int, h: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def assert_error(r, status, code=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in r.text
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.mark.parametrize("kind", ["jpeg", "png", "webp", "gif", "bmp", "cmyk", "gray", "palette", "rgba", "png16",
                                  "exif"])
def test_classify_multipart_real_files(http, kind):
    domain = ["photo", "sketch", "comic"][len(kind) % 3]
    r = upload(http, image_bytes(kind), domain)
    assert r.status_code == 200, r.text
    body = r.json()
    # review_id: only on answers sent to the review queue (here the random 1% audit share, MODERATION_REVIEW_AUDIT_RATE)
    assert set(body) - {"review_id"} == {"domain", "bundle", "model", "labels", "top_label", "out_of_scope",
                                         "scope_score", "flagged", "needs_review", "rule", "latency_ms"}
    # these bundles predate calibrated decisions: they still serve, with the old rule, everything in scope
    assert body["rule"] == "legacy" and body["out_of_scope"] is False and body["scope_score"] is None
    assert body["domain"] == domain and set(body["bundle"]) == {"version", "group"}
    assert len(body["labels"]) == len(LABELS[domain])
    for x in body["labels"]:
        assert {"label", "score", "probability", "threshold", "flagged"} <= set(x)
    assert abs(sum(x["probability"] for x in body["labels"]) - 1) < 1e-5
    assert body["latency_ms"] > 0


def test_classify_json_base64_and_data_uri(http):
    data = image_bytes("png")
    a = http.post("/classify", json={"image": base64.b64encode(data).decode(), "domain": "sketch"})
    b = http.post("/classify", json={"image": "data:image/png;base64," + base64.b64encode(data).decode(),
                                     "domain": "sketch"})
    c = upload(http, data, "sketch")
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.json()["labels"] == b.json()["labels"] == c.json()["labels"]


def test_batch_multipart_mixed_domains_and_per_item_errors(http):
    kinds = ["jpeg", "png", "truncated", "webp"]
    domains = ["photo", "sketch", "photo", "nope"]
    r = http.post("/classify/batch", files=[("images", (f"{k}.bin", image_bytes(k), "application/octet-stream"))
                                            for k in kinds], data={"domains": domains})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["index"] for x in res] == [0, 1, 2, 3]
    assert [x["status"] for x in res] == [200, 200, 400, 404]
    assert res[0]["result"]["domain"] == "photo" and res[1]["result"]["domain"] == "sketch"
    assert res[2]["error"]["code"] == "undecodable_image" and "comic" in res[3]["error"]["message"]


def test_batch_json(http):
    items = [{"image": base64.b64encode(image_bytes("jpeg", seed=i)).decode(), "domain": d}
             for i, d in enumerate(["photo", "comic", "sketch"])]
    r = http.post("/classify/batch", json={"items": items})
    assert r.status_code == 200 and [x["result"]["domain"] for x in r.json()["results"]] == ["photo", "comic", "sketch"]


def test_batch_request_errors(http):
    one = ("images", ("a.jpg", image_bytes("jpeg"), "image/jpeg"))
    assert_error(http.post("/classify/batch", files=[one] * 9, data={"domains": "photo"}), 413, "too_many_items")
    assert_error(http.post("/classify/batch", files=[one] * 3, data={"domains": ["photo", "sketch"]}), 422)
    assert_error(http.post("/classify/batch", files=[one] * 2), 422)
    assert_error(http.post("/classify/batch", json={"items": []}), 422)
    assert_error(http.post("/classify/batch", json={"items": [{"image": "", "domain": "photo"}] * 9}), 413)
    assert_error(http.post("/classify/batch", json=[1, 2]), 422)
    # one domain for all images is accepted
    r = http.post("/classify/batch", files=[one] * 2, data={"domains": "comic"})
    assert [x["status"] for x in r.json()["results"]] == [200, 200]


def test_error_codes(http):
    assert_error(upload(http, image_bytes("truncated")), 400, "undecodable_image")
    assert_error(upload(http, b"definitely not an image"), 400, "undecodable_image")
    assert_error(upload(http, b""), 400, "empty_image")
    assert_error(upload(http, image_bytes("png", size=(1, 1))), 400, "degenerate_image")
    assert_error(upload(http, b"\x00" * (MAX_BYTES + 1)), 413, "image_too_large")
    assert_error(upload(http, solid_png(2100, 2000)), 413, "too_many_pixels")  # 12 KB, 4.2 Mpx
    assert_error(upload(http, b"%PDF-1.7\n..."), 415, "unsupported_format")
    e = assert_error(upload(http, image_bytes("jpeg"), domain="../../etc/passwd"), 404, "unknown_domain")
    assert all(d in e["message"] for d in LABELS)
    assert_error(http.post("/classify", data={"domain": "photo"}, files={"other": ("x", b"1")}), 422)
    assert_error(http.post("/classify", files={"image": ("a.jpg", image_bytes("jpeg"))}), 422, "validation_error")
    assert_error(http.post("/classify", json={"domain": "photo"}), 422, "validation_error")
    assert_error(http.post("/classify", json={"image": "%%%", "domain": "photo"}), 400, "invalid_base64")
    assert_error(http.post("/classify", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_error(http.post("/classify", content=b"raw", headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type")
    raw = {"content-type": "image/jpeg"}  # the image itself as the body, its domain as ?domain=
    assert_error(http.post("/classify?domain=photo", content=b"raw", headers=raw), 400, "undecodable_image")
    assert_error(http.post("/classify?domain=nope", content=image_bytes("jpeg"), headers=raw), 404, "unknown_domain")
    as_raw = http.post("/classify?domain=photo", content=image_bytes("jpeg"), headers=raw)
    assert as_raw.status_code == 200, as_raw.text
    assert as_raw.json()["labels"] == upload(http, image_bytes("jpeg")).json()["labels"]
    two = [("image", ("a.jpg", image_bytes("jpeg"), "image/jpeg"))] * 2
    assert_error(http.post("/classify", files=two, data={"domain": "photo"}), 422)
    assert_error(http.get("/classify"), 405)
    assert_error(http.get("/no/such/route"), 404)
    assert http.get("/readyz").status_code == 200  # still ready after all that


def test_domains(http):
    body = http.get("/domains").json()
    assert [d["domain"] for d in body["domains"]] == sorted(LABELS)
    d = body["domains"][0]
    assert {"domain", "version", "labels", "group", "metrics", "sha256", "loaded_at"} <= set(d)
    assert d["metrics"]["accuracy"] == 0.5 and len(d["sha256"]) == 64
    assert {"name", "unsafe", "threshold"} <= set(d["labels"][0])


def test_health(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    r = http.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_admin_auth(http):
    assert_error(http.post("/admin/reload"), 401, "unauthorized")
    r = http.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
    assert_error(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    r = http.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["ok"] and r.json()["loaded"] == []


def test_metrics(http):
    upload(http, image_bytes("jpeg"), "comic")
    upload(http, b"junk", "comic")
    text = http.get("/metrics").text
    for needle in ('moderation_http_requests_total{method="POST",route="/classify",status="200"}',
                   'moderation_errors_total{code="undecodable_image",route="/classify",status="400"}',
                   'moderation_images_total{domain="comic"}', "moderation_batch_size_bucket",
                   "moderation_queue_depth_bucket", 'moderation_http_request_duration_seconds_bucket{le="0.005",route="/classify"}',
                   'moderation_bundle_loaded{domain="photo",sha256=', "moderation_inference_seconds_count",
                   "# TYPE moderation_decisions_total counter"):
        assert needle in text, needle


def test_openapi_served(http):
    spec = http.get("/openapi.json").json()
    assert set(spec["paths"]) >= {"/classify", "/classify/batch", "/domains", "/admin/reload", "/healthz", "/readyz",
                                  "/metrics"}


def test_logs_hold_no_image_bytes(server, http):
    marker = b"LEAKMARKER" * 20
    upload(http, marker)
    http.post("/classify", json={"image": base64.b64encode(marker).decode(), "domain": "photo"})
    log = server.log()
    assert "LEAKMARKER" not in log and base64.b64encode(marker).decode()[:40] not in log
    assert "Traceback" not in log


def test_concurrent_requests_are_batched(server, http):
    import concurrent.futures as cf

    data = image_bytes("jpeg")
    with cf.ThreadPoolExecutor(8) as pool, httpx.Client(base_url=server.url, timeout=60) as c:
        rs = list(pool.map(lambda i: c.post("/classify", files={"image": ("a.jpg", data)},
                                            data={"domain": ["photo", "sketch"][i % 2]}), range(32)))
    assert all(r.status_code == 200 for r in rs)
    text = http.get("/metrics").text
    count = float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("moderation_batch_size_count")))
    total = float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("moderation_batch_size_sum")))
    assert total / count > 1.0, "some requests shared a forward pass"


def test_slow_upload_gets_408(server, http):
    content, headers = slow_multipart(image_bytes("jpeg"), "photo", seconds=4.0)
    try:
        r = httpx.post(server.url + "/classify", content=content, headers=headers, timeout=30)
    except httpx.TransportError:  # the server may close while the client is still writing
        r = None
    if r is not None:
        assert_error(r, 408, "request_timeout")
    assert http.get("/readyz").status_code == 200
    assert 'code="request_timeout"' in http.get("/metrics").text


def test_deeply_nested_json_is_a_400(http):
    r = http.post("/classify", content=b"[" * 200_000, headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_json")


def test_chunked_multipart_over_the_limit_is_cut_off_while_reading(server, http):
    boundary = "capboundary"

    def body():  # no Content-Length: the cap must apply while reading
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n").encode()
        for _ in range(40):
            yield b"\xff" * 32_768
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = httpx.post(server.url + "/classify", content=body(), timeout=30,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert_error(r, 413, "payload_too_large")
    except httpx.TransportError:
        pass  # the server may answer and close before the client finished writing
    assert http.get("/readyz").status_code == 200
