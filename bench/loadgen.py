"""Closed-loop HTTP load for the GPU bench: raw HTTP/1.1 over asyncio, several client processes.

A GPU server answers thousands of requests a second; one httpx process tops out at 1-2 k and
adds a few hundred microseconds of its own to every latency. Here every request is prebuilt
once (headers and multipart body as bytes), each connection is one closed-loop client
(keep-alive: it sends its next request when the answer is in), and the connections are spread
over `procs` processes that start measuring at the same wall-clock instant.

    python -m bench.loadgen --port 8000 --jpeg-dir DIR --domains photo,sketch --conc 16 \
        --start <epoch s> --warmup 2 --duration 6

prints one JSON object: latencies (s) of the requests that completed inside the measured
window, images done in it, errors and the first error seen. `run_load` starts the processes
and merges their answers. Standard library only (uvloop if installed), so a client process
starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BOUNDARY = "benchloadgen7f3a9c"


def multipart(files: list[tuple[str, bytes]], fields: list[tuple[str, str]]) -> bytes:
    """A multipart/form-data body: `files` as (field, JPEG bytes), `fields` as (name, value)."""
    parts = []
    for k, (name, data) in enumerate(files):
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{k}.jpg"\r\n'
                     f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
    for name, value in fields:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def build_requests(host: str, port: int, jpegs: list[bytes], domains: list[str], items: int) -> list[bytes]:
    """Whole HTTP requests, one per JPEG: /classify (items == 0) or /classify/batch of `items` images,
    domains cycling so that every batch mixes them."""
    out = []
    for i in range(len(jpegs)):
        if items:
            sel = [(i + j) % len(jpegs) for j in range(items)]
            body = multipart([("images", jpegs[j]) for j in sel],
                             [("domains", domains[(i + j) % len(domains)]) for j in range(items)])
            path = "/classify/batch"
        else:
            body = multipart([("image", jpegs[i])], [("domain", domains[i % len(domains)])])
            path = "/classify"
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
        out.append(head.encode() + body)
    return out


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status code and body of one HTTP/1.1 response (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                return status, body
    raise ValueError(f"response without Content-Length or chunked encoding: {lines[0]}")


async def drive(host: str, port: int, requests: list[bytes], conc: int, items: int, start: float,
                warmup_s: float, duration_s: float, offset: int = 0) -> dict:
    """`conc` keep-alive connections, each a closed-loop client, measured from `start` + `warmup_s`."""
    lat: list[float] = []
    done, errors, first_error = 0, 0, None
    t_meas, t_end = start + warmup_s, start + warmup_s + duration_s

    async def client(k: int) -> None:
        nonlocal done, errors, first_error
        reader, writer = await asyncio.open_connection(host, port)
        await asyncio.sleep(max(0.0, start - time.time()))
        i = (offset + k) * 7919
        try:
            while time.time() < t_end:
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body = await read_response(reader)
                t1 = time.perf_counter()
                i += 1
                if status != 200 or (items and not all(r["status"] == 200 for r in json.loads(body)["results"])):
                    errors += 1
                    first_error = first_error or f"{status}: {body[:300].decode('utf-8', 'replace')}"
                elif t_meas <= time.time() <= t_end:  # completed inside the window
                    lat.append(t1 - t0)
                    done += items or 1
        finally:
            writer.close()

    results = await asyncio.gather(*(client(k) for k in range(conc)), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            errors += 1
            first_error = first_error or f"{type(r).__name__}: {r}"
    return {"lat": lat, "images": done, "errors": errors, "first_error": first_error}


def load_start(procs: int) -> float:
    """A start instant by which `procs` client processes are connected and waiting."""
    return time.time() + 1.0 + 0.1 * procs


def run_load(port: int, jpeg_dir: Path, domains: list[str], conc: int, procs: int, warmup_s: float,
             duration_s: float, items: int = 0, host: str = "127.0.0.1", start: float | None = None) -> dict:
    """`conc` connections spread over `procs` client processes; img/s, p50/p99/mean latency (ms).
    `start`: the wall-clock (epoch) instant the clients start (default: when all can be connected)."""
    procs = max(1, min(procs, conc))
    start = start or load_start(procs)
    shares = [conc // procs + (1 if p < conc % procs else 0) for p in range(procs)]
    cmds = [[sys.executable, "-m", "bench.loadgen", "--host", host, "--port", str(port), "--jpeg-dir", str(jpeg_dir),
             "--domains", ",".join(domains), "--conc", str(n), "--items", str(items), "--start", repr(start),
             "--warmup", str(warmup_s), "--duration", str(duration_s), "--offset", str(sum(shares[:p]))]
            for p, n in enumerate(shares)]
    children = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in cmds]
    lat: list[float] = []
    images, errors, first_error = 0, 0, None
    for child in children:
        out, _ = child.communicate(timeout=start - time.time() + warmup_s + duration_s + 120)
        try:
            r = json.loads(out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            errors += 1
            first_error = first_error or f"client process exited with {child.returncode} and no result"
            continue
        lat += r["lat"]
        images += r["images"]
        errors += r["errors"]
        first_error = first_error or r["first_error"]
    lat.sort()

    def q(p: float) -> float:
        return 1e3 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    return {"img_s": images / duration_s, "requests": len(lat), "errors": errors, "first_error": first_error,
            "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
            "mean_ms": 1e3 * statistics.fmean(lat) if lat else float("nan"),
            "concurrency": conc, "client_procs": procs, "items_per_request": items or 1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--jpeg-dir", required=True, help="the JPEGs cycled through (*.jpg)")
    p.add_argument("--domains", required=True, help="comma-separated, cycled over the requests")
    p.add_argument("--conc", type=int, default=1, help="keep-alive connections (closed-loop clients)")
    p.add_argument("--items", type=int, default=0, help="images per /classify/batch request (0: /classify)")
    p.add_argument("--start", type=float, default=None, help="wall-clock (epoch) start; default now")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--offset", type=int, default=0, help="first client's index (spreads images over processes)")
    a = p.parse_args(argv)
    jpegs = [f.read_bytes() for f in sorted(Path(a.jpeg_dir).glob("*.jpg"))]
    if not jpegs:
        raise SystemExit(f"no *.jpg in {a.jpeg_dir}")
    requests = build_requests(a.host, a.port, jpegs, a.domains.split(","), a.items)
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    start = a.start if a.start is not None else time.time()
    print(json.dumps(run(drive(a.host, a.port, requests, a.conc, a.items, start, a.warmup, a.duration,
                               a.offset))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
