"""The real HTTP server against the bare and the prompted encoder, same model, one run.

    python -m bench service --model ViT-B-32 --device cpu
    python -m bench service --model ViT-B-16 --device cuda --precision fp16 --concurrency 1,16,64,256

What it does:
  1. builds a random-init CLIP (real FLOPs), saves it to a temporary .safetensors (the server
     loads it as a local checkpoint: MODERATION_PRETRAINED=<path>), and publishes one bundle
     per domain (random prompts, production sizes) into a temporary store;
  2. starts `python -m service` in a subprocess with MODERATION_* settings, waits for /readyz;
  3. drives it over HTTP with JPEG uploads and mixed domains: /classify at each concurrency,
     then /classify/batch; then the same highest-concurrency /classify and the batch again with
     no domain, so the store's router picks it (one extra bare-CLIP forward per image):
     routed_over_explicit compares them in the same run;
  4. between the HTTP phases, measures in this process the bare open_clip `encode_image`
     and the prompted image tower (PromptedCLIP through promptclip.ImageRunner (promptclip.graphs), what
     the server runs) on the same images, preprocessed once: model only, decode and
     preprocess NOT included (their cost is reported separately, per image, per core).

service_over_bare = best sustained HTTP throughput / bare encoder throughput at the
server's MAX_BATCH; service_over_prompted = the same over the prompted encoder's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from bench.fixtures import (
    DOMAINS,
    bare_and_prompted,
    make_jpegs,
    publish_bundles,
    publish_router,
    save_random_clip,
)
from bench.timing import Reference, emit, machine, median_ratio, table
from promptclip import (
    ModelSpec,
    PromptedCLIP,
    load_clip,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- load generation
async def drive(url: str, jpegs: list[bytes], domains: list[str], concurrency: int, warmup_s: float,
                duration_s: float, batch_items: int = 0, routed: bool = False) -> dict:
    """Closed-loop load: `concurrency` clients, each sending its next request when one returns.

    Throughput counts the images whose request completed inside the measured window. With
    `batch_items` > 0 each request is a /classify/batch of that many images. `routed`: no domain
    is sent, the server's router picks it.
    """
    import httpx

    lat: list[float] = []
    images_done, errors = 0, 0
    t_start = time.perf_counter()
    t_meas, t_end = t_start + warmup_s, t_start + warmup_s + duration_s
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal images_done, errors
        i = k * 7919
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            if batch_items:
                sel = [(i + j) % len(jpegs) for j in range(batch_items)]
                files = [("images", (f"{j}.jpg", jpegs[j], "image/jpeg")) for j in sel]
                data = {} if routed else {"domains": [domains[(i + j) % len(domains)] for j in range(batch_items)]}
                r = await http.post("/classify/batch", files=files, data=data)
                ok = r.status_code == 200 and all(it["status"] == 200 for it in r.json()["results"])
                n = batch_items
            else:
                r = await http.post("/classify", files={"image": ("x.jpg", jpegs[i % len(jpegs)], "image/jpeg")},
                                    data={} if routed else {"domain": domains[i % len(domains)]})
                ok, n = r.status_code == 200, 1
            t1 = time.perf_counter()
            i += batch_items or 1
            if not ok:
                errors += 1
            elif t_meas <= t1 <= t_end:  # completed inside the window (long batches may start before it)
                lat.append(t1 - t0)
                images_done += n

    async with httpx.AsyncClient(base_url=url, timeout=600.0, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
    lat.sort()
    q = (lambda p: 1e3 * lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else (lambda p: float("nan"))
    return {"img_s": images_done / duration_s, "requests": len(lat), "errors": errors,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "mean_ms": 1e3 * statistics.fmean(lat) if lat else float("nan")}


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server was not ready within {timeout_s:.0f} s")


# ----------------------------------------------------------------------------- profile
CATEGORIES = (  # first match wins, on the whole stack of a sample (thread name included)
    ("startup (imports, load model, bundles, warm-up)",
     ("_startup (service/main.py", "load_clip", "BundleRegistry.reload", "_find_and_load")),
    ("model forward (torch)", ("_forward (service/engine.py", "encode_image", "ImageRunner")),
    ("decode + preprocess (PIL, torchvision)", ("service/decode.py", "PIL/", "torchvision/")),
    ("HTTP parsing / multipart / responses", ("multipart", "starlette/", "fastapi/", "h11", "httptools", "uvicorn/")),
    ("AnyIO worker threads (Starlette's UploadFile I/O hand-offs)", ("AnyIO worker thread",)),
    ("pool threads between jobs (queue get, wake-up)", ("_worker (concurrent/futures/thread.py",)),
    ("scoring / results", ("service/scoring.py", "service/routers/")),
    ("batching (engine loop)", ("service/engine.py",)),
    ("asyncio event loop", ("asyncio/",)),
)


def stop_server(proc: subprocess.Popen, py_spy: bool = False) -> None:
    """SIGINT to py-spy (it writes its file, then we stop the server), else SIGTERM to the session."""
    if py_spy and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own session only
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def print_py_spy_summary(path: str) -> dict[str, float]:
    """Share of the server's sampled CPU time per category and per thread (idle samples excluded)."""
    cats: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        print(f"py-spy: no profile ({e})")
        return {}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        threads[frames[0]] = threads.get(frames[0], 0) + count
        name = next((c for c, keys in CATEGORIES if any(k in stack for k in keys)), "other")
        cats[name] = cats.get(name, 0) + count
    if not total:
        print("py-spy: no samples")
        return {}
    print(f"\npy-spy: {total} samples of the server's busy threads ({path})")
    print(table([{"where": k, "share %": 100 * v / total} for k, v in sorted(cats.items(), key=lambda kv: -kv[1])],
                ["where", "share %"]))
    print(table([{"thread": k[:60], "share %": 100 * v / total}
                 for k, v in sorted(threads.items(), key=lambda kv: -kv[1])[:8]], ["thread", "share %"]))
    return {k: v / total for k, v in cats.items()}


# ----------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench service", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="ViT-B-32",
                   help="open_clip architecture or a path to an open_clip JSON config (random init, real FLOPs)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (server and in-process encoder)")
    p.add_argument("--precision", default=None, help="fp32 | fp16 | bf16 (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--domains", type=int, default=4, help="domains published and mixed in the traffic")
    p.add_argument("--tokens", default="4,4", help="group,private prompt tokens per layer")
    p.add_argument("--images", type=int, default=32, help="distinct JPEGs cycled through")
    p.add_argument("--image-size", default="640x480", help="JPEG width x height")
    p.add_argument("--concurrency", default=None, help="single-image /classify levels (default 1,4,16 CPU; "
                                                       "1,16,64,256 CUDA)")
    p.add_argument("--batch-items", type=int, default=16, help="images per /classify/batch request (0: skip)")
    p.add_argument("--batch-concurrency", type=int, default=None, help="concurrent batch requests "
                                                                       "(default 2 CPU, 16 CUDA)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per level (default 20 CPU, 10 CUDA)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds per level (default 5 CPU, 2 CUDA)")
    p.add_argument("--max-batch", type=int, default=None, help="server MODERATION_MAX_BATCH (default 16 CPU, 256 CUDA)")
    p.add_argument("--max-wait-ms", type=float, default=None, help="server MODERATION_MAX_WAIT_MS (default: "
                                                                   "its own)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in the server and here (default: 1 on CPU, see bench encoder --help; "
                        "0: torch's)")
    p.add_argument("--guard", type=float, default=0.0, help="every bundle's zero-shot guard weight (0: none; "
                   "above 0 the server adds a bare forward pass per image)")
    p.add_argument("--decode-workers", type=int, default=None, help="server MODERATION_DECODE_WORKERS")
    p.add_argument("--server-log", default=None, help="write the server's output here (default: discarded)")
    p.add_argument("--py-spy", default=None, metavar="OUT",
                   help="run the server under `py-spy record` (pip install py-spy), write its raw stacks to OUT "
                        "and print where the server's CPU time went")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = args.precision or ("fp16" if cuda else "fp32")
    levels = [int(c) for c in (args.concurrency or ("1,16,64,256" if cuda else "1,4,16")).split(",")]
    duration = args.duration or (10.0 if cuda else 20.0)
    warm = args.warmup if args.warmup is not None else (2.0 if cuda else 5.0)
    max_batch = args.max_batch or (256 if cuda else 16)
    batch_conc = args.batch_concurrency or (16 if cuda else 2)
    n_group, n_private = (int(t) for t in args.tokens.split(","))
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    threads = args.threads if args.threads is not None else (0 if cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    domains = DOMAINS[: args.domains] if args.domains <= len(DOMAINS) else [f"d{i}" for i in range(args.domains)]

    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    proc = None
    try:
        print(f"[setup] random {args.model} -> {tmp}/model.safetensors, {len(domains)} bundles", flush=True)
        ckpt = save_random_clip(args.model, tmp / "model.safetensors")
        clip = load_clip(ModelSpec(model=args.model, pretrained=str(ckpt), device=str(device), precision=precision))
        publish_bundles(clip, tmp / "store", domains, n_group, n_private, guard=args.guard)
        jpegs = make_jpegs(args.images, width, height)

        # decode + preprocess cost (PIL, this thread): what the server's decode pool pays per image
        t = time.perf_counter()
        pixels = [clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]
        decode_ms = 1e3 * (time.perf_counter() - t) / len(jpegs)
        publish_router(clip, tmp / "store", domains, pixels)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, MODERATION_MODEL=args.model, MODERATION_PRETRAINED=str(ckpt),
                   MODERATION_DEVICE=str(device), MODERATION_PRECISION=precision,
                   MODERATION_STORE_DIR=str(tmp / "store"), MODERATION_HOST="127.0.0.1", MODERATION_PORT=str(port),
                   MODERATION_MAX_BATCH=str(max_batch), MODERATION_MAX_QUEUE=str(max(4096, 4 * max_batch)),
                   MODERATION_MAX_BATCH_ITEMS=str(max(64, args.batch_items)), MODERATION_ACCESS_LOG="false",
                   MODERATION_LOG_LEVEL="warning", MODERATION_REQUEST_TIMEOUT_S="600")
        if args.max_wait_ms is not None:
            env["MODERATION_MAX_WAIT_MS"] = str(args.max_wait_ms)
        if threads:
            env["MODERATION_TORCH_THREADS"] = str(threads)
        if args.decode_workers:
            env["MODERATION_DECODE_WORKERS"] = str(args.decode_workers)
        log = open(args.server_log, "w") if args.server_log else subprocess.DEVNULL  # noqa: SIM115
        print(f"[setup] starting python -m service on {url} (MAX_BATCH={max_batch})", flush=True)
        cmd = [sys.executable, "-m", "service"]
        if args.py_spy:
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            cmd = [spy, "record", "--format", "raw", "-r", "100", "--threads", "-o", args.py_spy, "--", *cmd]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(url, proc, timeout_s=900)

        # the in-process reference: same weights, same prompts, same images, server's batch size
        enc = PromptedCLIP(clip.model)
        fns = bare_and_prompted(clip, enc, tmp / "store", domains, pixels, max_batch, device)
        ref = Reference(fns, device, target_s=0.5 if cuda else 0.1, warmup=1)
        enc_times = ref.times

        phases = [(f"/classify c={c}", c, 0, False) for c in levels]
        if args.batch_items:
            phases.append((f"/classify/batch x{args.batch_items} c={batch_conc}", batch_conc, args.batch_items, False))
        routed_pairs = {}  # routed phase -> the explicit phase it is compared with
        for name, conc, items, _ in list(phases[-2:] if args.batch_items else phases[-1:]):
            routed_pairs[name + " routed"] = name
            phases.append((name + " routed", conc, items, True))
        ref.rep()
        http: dict[str, dict] = {}
        for name, conc, items, routed in phases:
            print(f"[run] {name} for {warm:g}+{duration:g} s", flush=True)
            http[name] = asyncio.run(drive(url, jpegs, domains, conc, warm, duration, items, routed))
            ref.rep()
        routed_over_explicit = {k: http[k]["img_s"] / http[v]["img_s"] if http[v]["img_s"] else None
                                for k, v in routed_pairs.items()}

        bare_s = statistics.median(enc_times["bare"])
        prompted_s = statistics.median(enc_times["prompted"])
        bare_img_s, prompted_img_s = max_batch / bare_s, max_batch / prompted_s
        best_name = max((k for k in http if k not in routed_pairs), key=lambda k: http[k]["img_s"])
        best = http[best_name]
        c1 = http.get("/classify c=1")

        rows = [{"what": "bare encode_image (model only)", "img/s": bare_img_s, "p50 ms": "", "p99 ms": ""},
                {"what": "prompted runner (model only)", "img/s": prompted_img_s, "p50 ms": "", "p99 ms": ""}]
        rows += [{"what": "HTTP " + k, "img/s": v["img_s"], "p50 ms": v["p50_ms"], "p99 ms": v["p99_ms"],
                  "requests": v["requests"], "errors": v["errors"]} for k, v in http.items()]
        print(f"\nservice bench: {args.model} on {device} ({precision}), {len(domains)} domains mixed, prompts "
              f"{n_group}+{n_private} tokens, zero-shot guard {args.guard:g}, {width}x{height} JPEGs, "
              f"server MAX_BATCH={max_batch}")
        print(table(rows, ["what", "img/s", "p50 ms", "p99 ms", "requests", "errors"]))
        print(f"\nencoder reference at bs{max_batch}, {len(enc_times['bare'])} interleaved reps "
              f"(model only: decode+preprocess excluded); PIL decode+preprocess {decode_ms:.1f} ms/image/core")
        print(f"best: {best_name} {best['img_s']:.2f} img/s -> service_over_bare "
              f"{best['img_s'] / bare_img_s:.3f}, service_over_prompted {best['img_s'] / prompted_img_s:.3f}")
        for k, v in routed_over_explicit.items():
            print(f"routed vs explicit domain: {k} / {routed_pairs[k]} = {v:.3f}" if v else f"{k}: no throughput")

        result = {
            "bench": "service", "model": args.model, "device": str(device), "precision": precision,
            "domains": len(domains), "tokens": {"group": n_group, "private": n_private}, "guard": args.guard,
            "jpeg": f"{width}x{height}", "max_batch": max_batch,
            "encoder_includes_decode": False,
            "bare_img_s": bare_img_s, "prompted_img_s": prompted_img_s,
            "prompted_over_bare": median_ratio(enc_times["bare"], enc_times["prompted"]),
            "service_img_s": best["img_s"], "best": best_name,
            "service_over_bare": best["img_s"] / bare_img_s,
            "service_over_prompted": best["img_s"] / prompted_img_s,
            "p50_ms_c1": c1["p50_ms"] if c1 else None, "p99_ms_c1": c1["p99_ms"] if c1 else None,
            "p50_ms_best": best["p50_ms"], "p99_ms_best": best["p99_ms"],
            "decode_preprocess_ms_per_image": decode_ms,
            "http": http, "encoder_reps": len(enc_times["bare"]), "routed_over_explicit": routed_over_explicit,
            "machine": machine(),
        }
        if args.py_spy:
            stop_server(proc, py_spy=True)
            shares = print_py_spy_summary(args.py_spy)
            result["server_cpu_shares"] = {k: round(v, 4) for k, v in shares.items()}
        emit(result)
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)
