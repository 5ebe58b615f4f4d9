"""What an operator meets on the service, through a real `python -m service` process: --help, offline
/docs, the admin routes' 415, the trailing slash, ?domain= and the store copy of the README."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest

from tests.service.serving import REPO, image_bytes, running_server

TOKEN = "operator-test-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The embedded default on a copy of the shipped store (the README's label example edits a copy)."""
    store = tmp_path_factory.mktemp("store") / "store"
    shutil.copytree(REPO / "prompts_store", store)
    with running_server({"MODERATION_STORE_DIR": str(store), "MODERATION_ADMIN_TOKEN": TOKEN}) as srv:
        srv.store = store
        yield srv


def test_help_prints_every_setting_and_binds_nothing():
    from service.settings import Settings

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin", "MODERATION_PORT": "1"})
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 60 and "Uvicorn running" not in r.stderr + r.stdout
    for name, field in Settings.model_fields.items():
        assert f"MODERATION_{name.upper()} = " in r.stdout, name
        if field.description:  # the meaning, read from the field (module names left out)
            assert field.description[:24] in r.stdout, name
    assert "MODERATION_MAX_IMAGE_BYTES = 10485760" in r.stdout and "issue" not in r.stdout.lower()
    assert "promptclip." not in r.stdout
    r = subprocess.run([sys.executable, "-m", "service", "--bogus"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def _page_refs(html: str) -> list[str]:
    p = _Refs()
    p.feed(html)
    # URLs written into the inline script (Swagger UI's url: '/openapi.json', ...)
    return p.refs + re.findall(r"""url\s*[:=]\s*['"]([^'"]+)['"]""", html)


def test_docs_page_references_only_local_assets_and_they_are_served(server):
    with server.client() as http:
        assert http.get("/redoc").status_code == 404  # ReDoc's bundle would fetch its logo from a CDN
        r = http.get("/docs")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        refs = _page_refs(r.text)
        assert refs and not re.search(r"https?://|//cdn|jsdelivr|unpkg|googleapis", r.text), r.text
        for ref in refs:
            assert ref.startswith("/"), ref
            got = http.get(ref)
            assert got.status_code == 200 and len(got.content) > 100, ref
        assets = [ref for ref in refs if ref.startswith("/docs-assets/")]
        assert any(a.endswith(".js") for a in assets)
        assert http.get("/openapi.json").json()["paths"]["/classify"]


def test_admin_label_add_refuses_a_form_body_like_classify_and_publishes_0644(server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = '{"name": "star", "prompt": "a photo of a star.", "unsafe": true}'
    with server.client() as http:
        # curl -d without -H 'content-type: application/json' sends a form encoding
        r = http.post("/admin/domains/photo/labels", content=body,
                      headers={**auth, "content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415, r.text
        err = r.json()["error"]
        assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]
        c = http.post("/classify", content=b"x", headers={"content-type": "application/x-www-form-urlencoded"})
        assert c.status_code == 415 and c.json()["error"]["code"] == err["code"]
        r = http.post("/admin/domains/photo/labels", content=body, headers={**auth, "content-type": "application/json"})
        assert r.status_code == 201, r.text
        version = r.json()["version"]
    path = server.store / "photo" / f"{version}.safetensors"
    for p in (path, server.store / "photo" / "CURRENT"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert (REPO / "prompts_store" / "photo" / f"{version}.safetensors").exists() is False  # the copy was edited


def test_trailing_slash_is_the_same_route(server):
    png = image_bytes("png")
    with server.client() as http:
        a = http.post("/classify", files={"image": ("a.png", png)}, data={"domain": "photo"})
        b = http.post("/classify/", files={"image": ("a.png", png)}, data={"domain": "photo"})
        assert a.status_code == b.status_code == 200
        assert a.json()["labels"] == b.json()["labels"]
        r = http.post("/classify/batch/", files=[("images", ("a.png", png))], data={"domains": "photo"})
        assert r.status_code == 200 and r.json()["results"][0]["status"] == 200


def test_query_string_domain_is_honoured_and_a_conflict_is_422(server):
    import base64

    png = image_bytes("png")
    with server.client() as http:
        r = http.post("/classify?domain=sketch", files={"image": ("a.png", png)})
        assert r.status_code == 200 and r.json()["domain"] == "sketch" and "routing" not in r.json()
        r = http.post("/classify?domain=sketch", json={"image": base64.b64encode(png).decode()})
        assert r.status_code == 200 and r.json()["domain"] == "sketch"
        r = http.post("/classify?domain=sketch", files={"image": ("a.png", png)}, data={"domain": "photo"})
        assert r.status_code == 422 and "query string" in r.json()["error"]["message"]
        r = http.post("/classify?domain=photo", files={"image": ("a.png", png)}, data={"domain": "photo"})
        assert r.status_code == 200
        r = http.post("/classify?domain=medical", files={"image": ("a.png", png)})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_domain"
        r = http.post("/classify/batch?domain=photo", files=[("images", ("a.png", png))])
        assert r.status_code == 422 and "query string" in r.json()["error"]["message"]
