"""The GPU goals in one run: P1 (prompted encoder), P2 (HTTP throughput), P3 (HTTP latency), ablations.

    python -m bench gpu                                   # CUDA: ViT-B-16, random init, fp16
    python -m bench gpu --model tiny.json --device cpu    # the same steps on a tiny model (tests)

What it does, in this order, on one model (random init: real FLOPs, nothing downloaded):
  1. saves the random CLIP to a temporary .safetensors and publishes one bundle per domain
     (random prompts, 4+4 tokens at every layer, the full decision rule: bench.fixtures);
  2. starts one real server (`python -m service`, uvicorn) per variant, in parallel, and waits
     until every one is ready: `full` (CUDA graphs and nvjpeg on, the defaults), and the
     ablations `no_cuda_graphs` (MODERATION_CUDA_GRAPHS=false) and `no_nvjpeg`
     (MODERATION_DEVICE_JPEG=false: PIL decode + CPU preprocess);
  3. P1, with the servers idle: `python -m bench encoder` in this process at bs1 and bs256
     (bare `encode_image` vs the prompted tower, FLOP ratio divided out);
  4. per variant, JPEG uploads of mixed domains through HTTP (bench.loadgen: raw HTTP/1.1,
     several client processes): /classify at concurrency 64 (P2), then at concurrency 1 (P3);
     for `full` also /classify/batch. Between phases, bare `encode_image` and the prompted
     runner at the server's MAX_BATCH in this process (model only): the P2 denominator;
  5. decode cost per image in this process: PIL + preprocess, nvjpeg one image at a time (what
     the server does), nvjpeg batched.

Writes one JSON object to <out-dir>/<date>-<device>.json after every phase (`complete` turns
true at the end) and prints it as the last line. `--budget-s` makes the run skip what would not
finish in time, so a device lease is never overrun.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from bench.fixtures import DOMAINS, bare_and_prompted, make_jpegs, publish_bundles, save_random_clip
from bench.loadgen import run_load
from bench.service import free_port, print_py_spy_summary, stop_server, wait_ready
from bench.timing import interleaved, machine, table

GOALS = {"P1": ("efficiency", ">=", 0.97), "P2": ("service_over_bare", ">=", 0.5), "P3": ("p50_ms", "<=", 3.0)}
VARIANTS = {  # server settings on top of the common ones
    "full": {},
    "no_cuda_graphs": {"MODERATION_CUDA_GRAPHS": "false"},
    "no_nvjpeg": {"MODERATION_DEVICE_JPEG": "false"},
}


class Budget:
    """Wall-clock budget of the whole run: phases that would not fit are skipped, and said so."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def allows(self, cost_s: float, what: str, skipped: list[str]) -> bool:
        if self.left() >= cost_s:
            return True
        skipped.append(what)
        print(f"[budget] skipping {what}: needs ~{cost_s:.0f} s, {self.left():.0f} s left", flush=True)
        return False


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def scrape(url: str) -> dict[str, float]:
    """The server's batch counters from /metrics (prometheus text format)."""
    import httpx

    keys = ("moderation_batch_size_sum", "moderation_batch_size_count", "moderation_inference_seconds_sum")
    out = dict.fromkeys(keys, 0.0)
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
            name, _, value = line.partition(" ")
            if name in out:
                out[name] = float(value)
    return out


def batch_stats(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Mean images per forward, forwards, and the share of the phase the model thread was busy."""
    n = after["moderation_batch_size_count"] - before["moderation_batch_size_count"]
    imgs = after["moderation_batch_size_sum"] - before["moderation_batch_size_sum"]
    busy = after["moderation_inference_seconds_sum"] - before["moderation_inference_seconds_sum"]
    return {"forwards": n, "mean_batch": imgs / n if n else 0.0, "model_busy": busy / seconds if seconds else 0.0,
            "model_ms_per_forward": 1e3 * busy / n if n else 0.0}


def run_encoder_bench(model: str, device: torch.device, precision: str, sizes: str, reps: int,
                      rep_s: float, domains: int, tokens: str) -> dict:
    """`python -m bench encoder` in this process; its table goes to the log, its JSON comes back."""
    from bench.encoder import main as encoder_main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        encoder_main(["--model", model, "--device", str(device), "--precision", precision, "--batch-sizes", sizes,
                      "--reps", str(reps), "--rep-seconds", str(rep_s), "--domains", str(domains),
                      "--tokens", tokens])
    text = buf.getvalue().strip()
    print(text, flush=True)
    return json.loads(text.splitlines()[-1])


def decode_costs(jpegs: list[bytes], clip, device: torch.device) -> dict[str, float]:
    """ms per image: PIL decode + preprocess (one core), the device path one image at a time (as the
    server's decode threads call it), and batched nvjpeg + preprocess (decode_jpeg_batch_gpu)."""
    from promptclip import device_jpeg_preprocessor
    from promptclip.device_decode import decode_jpeg_batch_gpu, preprocess_batch

    def per_image(fn) -> float:
        fn()  # warm-up: nvjpeg handle, kernels
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return 1e3 * (time.perf_counter() - t) / len(jpegs)

    out = {"pil_ms": per_image(lambda: [clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs])}
    fast = device_jpeg_preprocessor(clip.model, device)
    if fast is not None:
        out["device_single_ms"] = per_image(lambda: [fast(b) for b in jpegs])
        out["device_batched_ms"] = per_image(
            lambda: preprocess_batch(decode_jpeg_batch_gpu(jpegs, device), fast.image_size, fast.mean, fast.std))
    return out


def p3_breakdown(clip, store_dir: Path, jpegs: list[bytes], domains: list[str], device: torch.device,
                 n: int = 60) -> dict[str, float]:
    """Median ms of a lone request's steps, through the service's own decoder and engine in this
    process (no HTTP): `decode` (ImageDecoder: thread hop, header checks, nvjpeg or PIL, preprocess),
    `engine` (queue, model thread, upload, CUDA-graph replay, scoring), `replay` (the bs1 graph
    alone), `device_jpeg` (the nvjpeg seam alone, synchronised). HTTP's share of P3 is the
    HTTP p50 less decode and engine."""
    import asyncio

    from promptclip import ImageRunner, PromptedCLIP, device_jpeg_preprocessor
    from service.decode import ImageDecoder
    from service.engine import BatchingEngine
    from service.registry import BundleRegistry

    prompted = PromptedCLIP(clip.model)
    registry = BundleRegistry(clip, prompted, store_dir)
    registry.reload()
    snap = registry.snapshot
    fast = device_jpeg_preprocessor(clip.model, device) if device.type == "cuda" else None
    decoder = ImageDecoder(clip.preprocess, max_bytes=10 << 20, max_pixels=40_000_000, min_side=8, workers=2,
                           device_jpeg=fast)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"decode": [], "engine": [], "replay": [], "device_jpeg": []}

    async def lone_requests() -> None:
        engine = BatchingEngine(prompted, max_batch=8, max_wait_ms=2.0, max_queue=64, timeout_s=60,
                                cuda_graphs=device.type == "cuda", arriving=lambda: decoder.pending)
        engine.start()
        await engine.warmup(snap, clip.info.image_size)
        try:
            for i in range(n + 5):
                t0 = time.perf_counter()
                pixels = await decoder.decode(jpegs[i % len(jpegs)])
                t1 = time.perf_counter()
                await engine.classify(pixels, snap.domains[domains[i % len(domains)]], snap)
                t2 = time.perf_counter()
                if i >= 5:
                    times["decode"].append(t1 - t0)
                    times["engine"].append(t2 - t1)
        finally:
            await engine.stop()
            decoder.close()

    asyncio.run(lone_requests())
    runner = ImageRunner(prompted, buckets=(1,))
    one = torch.randn(1, 3, clip.info.image_size, clip.info.image_size, device=device, dtype=prompted.dtype)
    bank = snap.vision_banks[next(iter(snap.vision_banks))][:1]
    for i in range(n + 5):
        sync()
        t0 = time.perf_counter()
        runner(one, bank)
        sync()
        t1 = time.perf_counter()
        if fast is not None:
            fast(jpegs[i % len(jpegs)])
            sync()
        t2 = time.perf_counter()
        if i >= 5:
            times["replay"].append(t1 - t0)
            if fast is not None:
                times["device_jpeg"].append(t2 - t1)
    return {k: round(1e3 * statistics.median(v), 3) for k, v in times.items() if v}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="ViT-B-16",
                   help="open_clip architecture or a path to an open_clip JSON config (random init, real FLOPs)")
    p.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda if available)")
    p.add_argument("--precision", default=None, help="fp32 | fp16 | bf16 (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--domains", type=int, default=4, help="domains published and mixed in every batch")
    p.add_argument("--tokens", default="4,4", help="group,private prompt tokens per layer")
    p.add_argument("--images", type=int, default=64, help="distinct JPEGs cycled through")
    p.add_argument("--image-size", default="640x480", help="JPEG width x height")
    p.add_argument("--encoder-batch-sizes", default=None, help="bench encoder --batch-sizes (default 1,256 on "
                                                               "CUDA, 1,4 on CPU); P1 is read at the largest")
    p.add_argument("--encoder-reps", type=int, default=None, help="bench encoder --reps (default 11 CUDA, 3 CPU)")
    p.add_argument("--max-batch", type=int, default=None, help="server MODERATION_MAX_BATCH (default 256 CUDA, 8 CPU)")
    p.add_argument("--concurrency", type=int, default=64, help="P2: concurrent /classify clients")
    p.add_argument("--client-procs", type=int, default=None, help="client processes for P2 (default 4 CUDA, 1 CPU)")
    p.add_argument("--batch-items", type=int, default=64, help="images per /classify/batch request (0: skip)")
    p.add_argument("--batch-concurrency", type=int, default=8, help="concurrent /classify/batch requests")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per HTTP phase")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each HTTP phase")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"server variants, from {', '.join(VARIANTS)}")
    p.add_argument("--extra", action="append", default=[], metavar="NAME:KEY=VAL[,KEY=VAL]",
                   help="one more server variant with these MODERATION_* settings (P2 and P3 phases only)")
    p.add_argument("--server-threads", type=int, default=None,
                   help="server MODERATION_TORCH_THREADS (default: 1 on CPU; on CUDA the cores shared by the "
                        "servers and this process)")
    p.add_argument("--decode-workers", type=int, default=None, help="server MODERATION_DECODE_WORKERS (default: "
                                                                    "the service's own)")
    p.add_argument("--py-spy", choices=("loaded", "c1"), default=None,
                   help="after the `full` phases, `py-spy record --pid` (PY_SPY or py-spy on PATH) on that server "
                        "through one more phase, at the P2 concurrency (loaded) or at 1 (c1); prints where its CPU "
                        "time went (not used for the goals)")
    p.add_argument("--out-dir", default="bench/results", help="where <date>-<device>.json is written")
    p.add_argument("--out", default=None, help="write the JSON here instead")
    p.add_argument("--server-log-dir", default=None, help="keep each server's log here (default: a temp dir)")
    p.add_argument("--budget-s", type=float, default=None, help="skip phases that would end later than this")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: C901 (one linear script, phase after phase)
    args = parse(argv)
    budget = Budget(args.budget_s)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    precision = args.precision or ("fp16" if cuda else "fp32")
    max_batch = args.max_batch or (256 if cuda else 8)
    procs = args.client_procs or (4 if cuda else 1)
    enc_sizes = args.encoder_batch_sizes or ("1,256" if cuda else "1,4")
    enc_reps = args.encoder_reps or (11 if cuda else 3)
    domains = DOMAINS[: args.domains] if args.domains <= len(DOMAINS) else [f"d{i}" for i in range(args.domains)]
    n_group, n_private = (int(t) for t in args.tokens.split(","))
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    variants = {v: VARIANTS[v] for v in args.variants.split(",") if v}
    for spec in args.extra:
        name, _, kv = spec.partition(":")
        variants[name] = dict(item.split("=", 1) for item in kv.split(",") if item)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    model_arch = args.model  # what the in-process encoder bench calls it (a JSON config gets registered)
    if args.model.endswith(".json"):
        from promptclip import register_config

        model_arch = Path(args.model).stem
        register_config(model_arch, json.loads(Path(args.model).read_text()))

    name = device_name(device)
    info = machine()
    out_path = Path(args.out) if args.out else Path(args.out_dir) / f"{info['date'][:10]}-{slug(name)}.json"
    result: dict = {
        "bench": "gpu", "complete": False, "device": name, "model": args.model, "precision": precision,
        "random_init": True, "domains": len(domains), "tokens": {"group": n_group, "private": n_private},
        "jpeg": f"{width}x{height}", "max_batch": max_batch, "concurrency": args.concurrency,
        "client_procs": procs, "duration_s": args.duration, "warmup_s": args.warmup,
        "command": "python -m bench gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info, "skipped": [],
        "efficiency": None, "service_over_bare": None, "p50_ms": None, "p99_ms": None,
        "ablations": {}, "http": {}, "server_batches": {},
    }

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    log_dir = Path(args.server_log_dir) if args.server_log_dir else tmp
    log_dir.mkdir(parents=True, exist_ok=True)
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    t_run = time.monotonic()

    def say(msg: str) -> None:
        print(f"{time.monotonic() - t_run:6.1f}s {msg}", flush=True)

    try:
        # ------------------------------------------------------------------ 1. model, bundles, JPEGs
        from promptclip import ModelSpec, PromptedCLIP, load_clip

        say(f"[setup] random {args.model} on {name} ({precision}), {len(domains)} bundles -> {tmp}")
        ckpt = save_random_clip(args.model, tmp / "model.safetensors")
        clip = load_clip(ModelSpec(model=args.model, pretrained=str(ckpt), device=str(device), precision=precision))
        publish_bundles(clip, tmp / "store", domains, n_group, n_private)
        jpegs = make_jpegs(args.images, width, height)
        jpeg_dir = tmp / "jpegs"
        jpeg_dir.mkdir()
        for i, b in enumerate(jpegs):
            (jpeg_dir / f"{i:04d}.jpg").write_bytes(b)
        result["jpeg_mean_bytes"] = round(statistics.fmean(len(b) for b in jpegs))

        # ------------------------------------------------------------------ 2. servers, in parallel
        common = dict(os.environ, MODERATION_MODEL=args.model, MODERATION_PRETRAINED=str(ckpt),
                      MODERATION_DEVICE=str(device), MODERATION_PRECISION=precision,
                      MODERATION_STORE_DIR=str(tmp / "store"), MODERATION_HOST="127.0.0.1",
                      MODERATION_MAX_BATCH=str(max_batch), MODERATION_MAX_QUEUE=str(max(4096, 4 * max_batch)),
                      MODERATION_MAX_BATCH_ITEMS=str(max(64, args.batch_items)), MODERATION_ACCESS_LOG="false",
                      MODERATION_LOG_LEVEL="info", MODERATION_REQUEST_TIMEOUT_S="120")
        # CPU threads per server: the servers start side by side, and OpenMP pools that add up to more
        # than the cores stall at their barriers (RESULTS.md); on CUDA the server's CPU torch work is small
        threads = args.server_threads or (max(1, (os.cpu_count() or 1) // (len(variants) + 1)) if cuda else 1)
        common["MODERATION_TORCH_THREADS"] = str(threads)
        if args.decode_workers:
            common["MODERATION_DECODE_WORKERS"] = str(args.decode_workers)
        result["server_settings"] = {k: v for k, v in common.items() if k.startswith("MODERATION_")
                                     and k not in ("MODERATION_PRETRAINED", "MODERATION_STORE_DIR")}
        result["variants"] = variants
        for v, extra in variants.items():
            port = free_port()
            cmd = [sys.executable, "-m", "service"]
            log = open(log_dir / f"server-{v}.log", "w")  # noqa: SIM115 (lives as long as the server)
            proc = subprocess.Popen(cmd, env=dict(common, MODERATION_PORT=str(port), **extra), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            servers[v] = (proc, f"http://127.0.0.1:{port}")
        for v, (proc, url) in list(servers.items()):
            try:
                wait_ready(url, proc, timeout_s=max(10.0, min(600.0, budget.left() - 60)))
            except (RuntimeError, TimeoutError) as e:
                tail = (log_dir / f"server-{v}.log").read_text()[-3000:]
                print(f"[server {v}] not ready: {e}\n{tail}", flush=True)
                result["skipped"].append(f"{v}: server not ready ({e})")
                stop_server(proc)
                del servers[v]
        result["servers_ready_s"] = round(time.monotonic() - t_run, 1)
        say(f"[setup] {len(servers)} server(s) ready after {result['servers_ready_s']} s")
        save()

        # ------------------------------------------------------------------ 3. P1, servers idle
        if budget.allows(60 if cuda else 30, "P1 encoder bench", result["skipped"]):
            say("[P1] python -m bench encoder (in process)")
            enc = run_encoder_bench(model_arch, device, precision, enc_sizes, enc_reps, 0.2, len(domains),
                                    args.tokens)
            result["encoder"] = enc
            result["efficiency"] = enc["efficiency"]
            result["flop_ideal"] = enc["flop_ideal"]
            if "naive_efficiency" in enc:
                result["naive_efficiency"] = enc["naive_efficiency"]
            top = enc["per_batch"][str(enc["batch"])]
            if "prompted+graph" in top:  # what the server replays, against eager bare
                result["efficiency_graph"] = top["prompted+graph"]["over_bare"] / enc["flop_ideal"]
            if "prompted+graph" in enc["per_batch"].get("1", {}):
                result["graph_bs1_ms"], result["eager_bs1_ms"] = enc["graph_bs1_ms"], enc["eager_bs1_ms"]
            save()

        # ------------------------------------------------------------------ P3's parts, decode cost
        if budget.allows(40 if cuda else 30, "P3 breakdown and decode costs", result["skipped"]):
            say("[P3] one lone request's steps in this process (the service's decoder and engine)")
            result["p3_breakdown_ms"] = p3_breakdown(clip, tmp / "store", jpegs, domains, device)
            print(f"    {result['p3_breakdown_ms']}", flush=True)
            result["decode_ms_per_image"] = decode_costs(jpegs, clip, device)
            print(f"    decode ms/image: {result['decode_ms_per_image']}", flush=True)
            save()

        # ------------------------------------------------------------------ 4. HTTP phases
        enc_model = PromptedCLIP(clip.model)
        pixels = [clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]
        fns = bare_and_prompted(clip, enc_model, tmp / "store", domains, pixels, max_batch, device)
        enc_times: dict[str, list[float]] = {"bare": [], "prompted": []}

        def encoder_rep(first: bool = False) -> None:
            with torch.inference_mode():
                got = interleaved(fns, device, reps=1, target_s=0.5 if cuda else 0.05, warmup=2 if first else 0)
            for k, t in got.items():
                enc_times[k].append(t[0])

        encoder_rep(first=True)
        # the goals' phases first (P2, P3 per variant), then the extras, so a tight budget drops extras
        phases = []
        for v in servers:
            phases.append((v, f"/classify c={args.concurrency}", args.concurrency, procs, 0))
            phases.append((v, "/classify c=1", 1, 1, 0))
        if "full" in servers and args.batch_items:
            phases.append(("full", f"/classify/batch x{args.batch_items} c={args.batch_concurrency}",
                           args.batch_concurrency, min(procs, args.batch_concurrency), args.batch_items))
        if "full" in servers and args.py_spy == "loaded":
            phases.append(("full", f"/classify c={args.concurrency} under py-spy", args.concurrency, procs, 0))
        if "full" in servers and args.py_spy == "c1":
            phases.append(("full", "/classify c=1 under py-spy", 1, 1, 0))
        cost = args.warmup + args.duration + 3 + 0.2 * procs
        for v, phase, conc, nproc, items in phases:
            if v not in servers or not budget.allows(cost + 5, f"{v} {phase}", result["skipped"]):
                continue
            proc, url = servers[v]
            say(f"[{v}] {phase} for {args.warmup:g}+{args.duration:g} s ({nproc} client process(es))")
            spy = None
            if phase.endswith("under py-spy"):
                spy_out = log_dir / f"py-spy-{v}.txt"
                spy = subprocess.Popen([os.environ.get("PY_SPY") or "py-spy", "record", "--pid", str(proc.pid),
                                        "--format", "raw", "-r", "100", "--threads", "-o", str(spy_out),
                                        "--duration", str(round(args.warmup + args.duration + 1.5))],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            before = scrape(url)
            r = run_load(int(url.rsplit(":", 1)[1]), jpeg_dir, domains, conc, nproc, args.warmup, args.duration,
                         items)
            stats = batch_stats(before, scrape(url), args.warmup + args.duration)
            result["http"].setdefault(v, {})[phase] = r
            result["server_batches"].setdefault(v, {})[phase] = stats
            print(f"    {r['img_s']:.1f} img/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['requests']} "
                  f"requests, {r['errors']} errors; mean batch {stats['mean_batch']:.1f}, model busy "
                  f"{100 * stats['model_busy']:.0f} %" + (f"; first error: {r['first_error']}" if r["errors"] else ""),
                  flush=True)
            if spy is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=30)
                if spy.poll() is None:
                    spy.terminate()
                shares = print_py_spy_summary(str(spy_out))
                result["server_cpu_shares"] = {k: round(s, 4) for k, s in shares.items()}
            encoder_rep()
            save()

        bare_img_s = max_batch / statistics.median(enc_times["bare"])
        prompted_img_s = max_batch / statistics.median(enc_times["prompted"])
        result.update(bare_img_s=bare_img_s, prompted_runner_img_s=prompted_img_s, encoder_reps=len(enc_times["bare"]))
        p2, p3 = f"/classify c={args.concurrency}", "/classify c=1"

        def summary(v: str) -> dict:
            h = result["http"].get(v, {})
            s = {}
            if p2 in h:
                s.update(service_img_s=h[p2]["img_s"], service_over_bare=h[p2]["img_s"] / bare_img_s,
                         service_over_prompted=h[p2]["img_s"] / prompted_img_s, p50_ms_loaded=h[p2]["p50_ms"],
                         errors=h[p2]["errors"])
            if p3 in h:
                s.update(p50_ms=h[p3]["p50_ms"], p99_ms=h[p3]["p99_ms"], c1_img_s=h[p3]["img_s"])
            return s

        full = summary("full")
        result.update(full)
        parts = result.get("p3_breakdown_ms")
        if parts and full.get("p50_ms"):
            parts["http_and_rest"] = round(full["p50_ms"] - parts["decode"] - parts["engine"], 3)
        batch = next((r for k, r in result["http"].get("full", {}).items() if k.startswith("/classify/batch")), None)
        if batch:
            result["batch_endpoint_img_s"] = batch["img_s"]
            result["batch_endpoint_over_bare"] = batch["img_s"] / bare_img_s
        for v in result["http"]:
            if v != "full":
                result["ablations"][v] = summary(v)
        gains = {}
        for v, what in (("no_cuda_graphs", "cuda_graphs"), ("no_nvjpeg", "nvjpeg")):
            a = result["ablations"].get(v, {})
            g = {}
            if a.get("service_img_s") and full.get("service_img_s"):
                g["throughput_x"] = full["service_img_s"] / a["service_img_s"]
            if a.get("p50_ms") and full.get("p50_ms"):
                g["p50_x"] = a["p50_ms"] / full["p50_ms"]  # > 1: the feature makes a lone request faster
            if g:
                gains[what] = g
        result["gains"] = gains

        # ------------------------------------------------------------------ report
        goals = {}
        for g, (key, op, target) in GOALS.items():
            val = result.get(key)
            goals[g] = {"key": key, "target": f"{op} {target}", "value": val,
                        "met": None if val is None else (val >= target if op == ">=" else val <= target)}
        result["goals"] = goals
        result["wall_s"] = round(time.monotonic() - t_run, 1)
        result["complete"] = True
        save()

        rows = [{"variant": v, "phase": k, "img/s": r["img_s"], "p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"],
                 "requests": r["requests"], "errors": r["errors"],
                 "mean batch": result["server_batches"][v][k]["mean_batch"],
                 "model busy %": 100 * result["server_batches"][v][k]["model_busy"]}
                for v, h in result["http"].items() for k, r in h.items()]
        print(f"\ngpu bench: {args.model} on {name} ({precision}), random init, {len(domains)} domains mixed, "
              f"{width}x{height} JPEGs (~{result['jpeg_mean_bytes'] // 1000} kB), MAX_BATCH={max_batch}")
        if rows:
            print(table(rows, ["variant", "phase", "img/s", "p50 ms", "p99 ms", "requests", "errors", "mean batch",
                               "model busy %"]))
        print(f"in process at bs{max_batch} (model only): bare encode_image {bare_img_s:,.0f} img/s, prompted runner "
              f"{prompted_img_s:,.0f} img/s; decode ms/image {result.get('decode_ms_per_image')}")
        print(table([{"goal": g, "key": d["key"], "target": d["target"], "value": d["value"] if d["value"] is not None
                      else "-", "met": d["met"]} for g, d in goals.items()], ["goal", "key", "target", "value", "met"]))
        if result["skipped"]:
            print(f"skipped: {result['skipped']}")
        print(f"wrote {out_path}")
        print(json.dumps({k: result[k] for k in ("device", "model", "efficiency", "service_over_bare", "p50_ms",
                                                 "p99_ms", "ablations", "gains", "complete")}, sort_keys=True))
        return 0
    finally:
        for proc, _ in servers.values():
            if proc.poll() is None:
                stop_server(proc)
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
