"""Load tools for reliability tests: a threaded request driver and a raw-socket slow uploader."""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tests.reliability.badinputs import encode, multipart_body, noise

DOMAINS = ("photo", "sketch", "comic")
IMAGES = [encode(noise((64 + 8 * i, 48), seed=100 + i), "JPEG", quality=90) for i in range(4)]


@dataclass
class Outcome:
    kind: str  # multipart | json | batch
    status: int  # -1: transport error
    started: float
    ended: float
    detail: str = ""
    checks: list[tuple[tuple[int, str, str], dict[str, float]]] = field(default_factory=list)  # (img, dom, ver) -> scores


def one_request(client: httpx.Client, i: int) -> Outcome:
    """Request number `i` of a mixed stream: multipart, JSON base64 and 4-image mixed-domain batches."""
    img, dom = i % len(IMAGES), DOMAINS[i % len(DOMAINS)]
    t0 = time.monotonic()
    kind = "batch" if i % 10 == 7 else "json" if i % 10 == 3 else "multipart"
    try:
        if kind == "multipart":
            r = client.post("/classify", files={"image": ("a.jpg", IMAGES[img], "image/jpeg")}, data={"domain": dom})
        elif kind == "json":
            r = client.post("/classify", json={"image": base64.b64encode(IMAGES[img]).decode(), "domain": dom})
        else:
            items = [(k % len(IMAGES), DOMAINS[(i + k) % len(DOMAINS)]) for k in range(4)]
            r = client.post("/classify/batch", files=[("images", ("b.jpg", IMAGES[a], "image/jpeg")) for a, _ in items],
                            data={"domains": [d for _, d in items]})
    except httpx.HTTPError as e:
        return Outcome(kind, -1, t0, time.monotonic(), repr(e))
    out = Outcome(kind, r.status_code, t0, time.monotonic())
    if r.status_code != 200:
        out.detail = r.text[:300]
        return out
    body = r.json()
    if kind == "batch":
        for (a, d), res in zip(items, body["results"], strict=True):
            if res["status"] != 200:
                out.status, out.detail = 1000 + res["status"], str(res["error"])
                return out
            out.checks.append(((a, d, res["result"]["bundle"]["version"]), _scores(res["result"])))
    else:
        out.checks.append(((img, dom, body["bundle"]["version"]), _scores(body)))
    return out


def _scores(result: dict) -> dict[str, float]:
    return {lab["label"]: lab["score"] for lab in result["labels"]}


class Driver:
    """`concurrency` threads, each with its own keep-alive client, sending requests 0..total-1."""

    def __init__(self, url: str, total: int, concurrency: int,
                 request: Callable[[httpx.Client, int], Outcome] = one_request, timeout: float = 60.0):
        self.url, self.total, self.concurrency, self.request, self.timeout = url, total, concurrency, request, timeout
        self.next = 0
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(concurrency)]

    def _take(self) -> int | None:
        with self.lock:
            if self.stop.is_set() or self.next >= self.total:
                return None
            self.next += 1
            return self.next - 1

    def _worker(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout) as c:
            while (i := self._take()) is not None:
                o = self.request(c, i)
                with self.lock:
                    self.outcomes.append(o)

    @property
    def done(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def start(self) -> Driver:
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "load driver hung"


def slow_upload(url: str, image: bytes, domain: str, duration_s: float, pieces: int = 20,
                read_timeout: float = 60.0, path: str = "/classify") -> tuple[int | None, bytes, float, bool]:
    """POST a multipart upload over a raw socket, trickling the body over `duration_s`.

    Returns (status or None if the server closed without answering, response bytes, seconds from
    the first byte sent to the response, whether the whole body was sent). Stops trickling as
    soon as the server answers or closes.
    """
    host, port = url.removeprefix("http://").split(":")
    boundary = "slowboundary"
    body = multipart_body(boundary, [("image", image, "a.jpg"), ("domain", domain.encode(), None)])
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
    step = max(1, len(body) // pieces)
    chunks = [body[k:k + step] for k in range(0, len(body), step)]
    pause = duration_s / max(1, len(chunks))
    t0 = time.monotonic()
    got, complete = b"", False
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(head)
        for chunk in chunks:
            ready, _, _ = select.select([s], [], [], pause)
            if ready:  # the server answered (or closed) before the upload finished
                break
            try:
                s.sendall(chunk)
            except OSError:
                break
        else:
            complete = True
        s.settimeout(read_timeout)
        while True:
            try:
                part = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not part:
                break
            got += part
            if b"\r\n\r\n" in got and _complete(got):
                break
    elapsed = time.monotonic() - t0
    status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else None
    return status, got, elapsed, complete


def _complete(resp: bytes) -> bool:
    head, _, rest = resp.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(rest) >= int(line.split(b":")[1])
    return False


def chunked_upload(url: str, total_bytes: int, chunk: int = 256 * 1024, path: str = "/classify",
                   content_type: str = "multipart", read_timeout: float = 60.0) -> tuple[int | None, bytes, int]:
    """Stream an oversized body with `Transfer-Encoding: chunked` (no Content-Length to check up front).

    Returns (status or None, response bytes, body bytes sent before the server answered or closed).
    A server that enforces its byte limit while reading answers long before `total_bytes`.
    """
    host, port = url.removeprefix("http://").split(":")
    boundary = "chunkboundary"
    if content_type == "multipart":
        ctype = f"multipart/form-data; boundary={boundary}"
        prefix = (f'--{boundary}\r\nContent-Disposition: form-data; name="domain"\r\n\r\nphoto\r\n'
                  f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
                  "Content-Type: image/jpeg\r\n\r\n").encode()
    else:
        ctype, prefix = "application/json", b'{"domain": "photo", "image": "'
    suffix = f"\r\n--{boundary}--\r\n".encode() if content_type == "multipart" else b'"}'
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode()
    filler = b"A" * chunk  # valid base64 and harmless file bytes alike
    sent, got = 0, b""
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(head)
        pieces = [prefix] + [filler] * (total_bytes // chunk) + [suffix]
        for piece in pieces:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            except OSError:
                break
            sent += len(piece)
            time.sleep(0.002)
        else:
            with contextlib.suppress(OSError):
                s.sendall(b"0\r\n\r\n")
        s.settimeout(read_timeout)
        while True:
            try:
                part = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not part:
                break
            got += part
            if b"\r\n\r\n" in got and _complete(got):
                break
    status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else None
    return status, got, sent
