"""Fixtures for reliability tests: one real `python -m service` per concern, built on tests/service/serving.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.badinputs import Limits, encode, noise
from tests.service.serving import Server, TinyModel, make_store, make_tiny_model, running_server, tiny_env

ADMIN_TOKEN = secrets.token_urlsafe(24)  # per test session; never written anywhere


@pytest.fixture(scope="session")
def limits() -> Limits:
    return Limits()


@pytest.fixture(scope="session")
def rel_model(tmp_path_factory) -> TinyModel:
    return make_tiny_model(tmp_path_factory.mktemp("rel-model"))


@pytest.fixture(scope="session")
def main_server(rel_model, limits, tmp_path_factory) -> Iterator[Server]:
    """The server the matrix, the security checks and the fuzzer share (they do not change its store)."""
    root = tmp_path_factory.mktemp("rel-main")
    make_store(root / "store", rel_model.clip)
    # debug logging: the log-leak probe must hold at the chattiest level an operator would pick
    env = tiny_env(rel_model, root / "store", MODERATION_ADMIN_TOKEN=ADMIN_TOKEN, MODERATION_LOG_LEVEL="debug",
                   **limits.env())
    with running_server(env) as srv:
        yield srv


REFERENCE = encode(noise((80, 60), seed=11), "JPEG", quality=92)


def classify(client: httpx.Client, image: bytes, domain: str = "photo", **kw) -> httpx.Response:
    return client.post("/classify", files={"image": ("img", image, "application/octet-stream")},
                       data={"domain": domain}, **kw)


def scores(resp: httpx.Response) -> dict[str, float]:
    body = resp.json()
    return {lab["label"]: lab["score"] for lab in body["labels"]}


def assert_error(resp: httpx.Response, status: int, codes: tuple[str, ...] | None = None) -> dict:
    """The documented error shape: status, JSON content type, {"error": {"code", "message"}}, no trace."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:400]}"
    assert resp.headers["content-type"].startswith("application/json"), resp.headers["content-type"]
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err.get("code"), str) and err["code"], body
    assert isinstance(err.get("message"), str) and err["message"], body
    if codes:
        assert err["code"] in codes, f"code {err['code']!r} not in {codes}: {err['message']}"
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    return err


def rss_kb(pid: int) -> int:
    """Resident set size of `pid` in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
