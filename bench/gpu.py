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
from bench.gpu_measure import batch_stats, decode_costs, p3_breakdown, run_encoder_bench, scrape
from bench.gpu_report import GOALS, goals, print_report, summarise  # noqa: F401 (GOALS: the bench's goals)
from bench.loadgen import run_load
from bench.overhead import busy_shares, process_tree
from bench.service import free_port, print_py_spy_summary, stop_server, wait_ready
from bench.timing import Reference, machine

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
    p.add_argument("--workers", default="1,8", help="front-end process counts (MODERATION_WORKERS): `full` runs with "
                                                    "the first, one more variant `workers<N>` per other count")
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


def start_servers(args: argparse.Namespace, result: dict, variants: dict, ckpt: Path, store: Path,
                  device: torch.device, precision: str, max_batch: int, log_dir: Path,
                  budget: Budget) -> dict[str, tuple[subprocess.Popen, str]]:
    """One `python -m service` per variant, started side by side; those not ready are stopped and noted."""
    common = dict(os.environ, MODERATION_MODEL=args.model, MODERATION_PRETRAINED=str(ckpt),
                  MODERATION_DEVICE=str(device), MODERATION_PRECISION=precision,
                  MODERATION_STORE_DIR=str(store), MODERATION_HOST="127.0.0.1",
                  MODERATION_MAX_BATCH=str(max_batch), MODERATION_MAX_QUEUE=str(max(4096, 4 * max_batch)),
                  MODERATION_MAX_BATCH_ITEMS=str(max(64, args.batch_items)), MODERATION_ACCESS_LOG="false",
                  MODERATION_LOG_LEVEL="info", MODERATION_REQUEST_TIMEOUT_S="120")
    # CPU threads per server: the servers start side by side, and OpenMP pools that add up to more
    # than the cores stall at their barriers (RESULTS.md); on CUDA the server's CPU torch work is small
    threads = args.server_threads or (max(1, (os.cpu_count() or 1) // (len(variants) + 1))
                                      if device.type == "cuda" else 1)
    common["MODERATION_TORCH_THREADS"] = str(threads)
    if args.decode_workers:
        common["MODERATION_DECODE_WORKERS"] = str(args.decode_workers)
    result["server_settings"] = {k: v for k, v in common.items() if k.startswith("MODERATION_")
                                 and k not in ("MODERATION_PRETRAINED", "MODERATION_STORE_DIR")}
    result["variants"] = variants
    servers = {}
    for v, extra in variants.items():
        port = free_port()
        log = open(log_dir / f"server-{v}.log", "w")  # noqa: SIM115 (lives as long as the server)
        proc = subprocess.Popen([sys.executable, "-m", "service"], env=dict(common, MODERATION_PORT=str(port), **extra),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
    return servers


def http_phases(args: argparse.Namespace, servers: dict, procs: int) -> list[tuple[str, str, int, int, int]]:
    """(variant, phase, concurrency, client processes, batch items): the goals' phases first (P2, P3 per
    variant), then the extras, so a tight budget drops the extras."""
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
    return phases


def run_phase(args: argparse.Namespace, result: dict, v: str, phase: str, load: tuple[int, int, int],
              server: tuple[subprocess.Popen, str], jpeg_dir: Path, domains: list[str], log_dir: Path) -> None:
    """One load phase against one server: throughput and latency, the server's batching, py-spy if asked."""
    (conc, nproc, items), (proc, url) = load, server
    spy = None
    if phase.endswith("under py-spy"):
        spy_out = log_dir / f"py-spy-{v}.txt"
        spy = subprocess.Popen([os.environ.get("PY_SPY") or "py-spy", "record", "--pid", str(proc.pid),
                                "--format", "raw", "-r", "100", "--threads", "-o", str(spy_out),
                                "--duration", str(round(args.warmup + args.duration + 1.5))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    before, cpu0 = scrape(url), process_tree(proc.pid)
    r = run_load(int(url.rsplit(":", 1)[1]), jpeg_dir, domains, conc, nproc, args.warmup, args.duration, items)
    stats = batch_stats(before, scrape(url), args.warmup + args.duration)
    busy = busy_shares(cpu0, process_tree(proc.pid), args.warmup + args.duration)
    result["http"].setdefault(v, {})[phase] = r
    result["server_batches"].setdefault(v, {})[phase] = stats
    result["process_busy"].setdefault(v, {})[phase] = [{"role": role, "pid": pid, "busy": round(b, 3)}
                                                        for role, pid, b in busy]
    print("    busy (share of one core): " + ", ".join(f"{role} {100 * b:.0f} %" for role, _, b in busy)
          + (f"; busiest: {busy[0][0]}" if busy else ""), flush=True)
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
        result["server_cpu_shares"] = {k: round(x, 4) for k, x in shares.items()}


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
    counts = [c for c in args.workers.split(",") if c]
    variants = {v: {**VARIANTS[v], "MODERATION_WORKERS": counts[0]} for v in args.variants.split(",") if v}
    if "full" in variants:  # the front-end count as a dimension: the full server with each other count
        variants |= {f"workers{c}": {"MODERATION_WORKERS": c} for c in counts[1:]}
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
        "ablations": {}, "http": {}, "server_batches": {}, "process_busy": {},
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
        servers.update(start_servers(args, result, variants, ckpt, tmp / "store", device, precision, max_batch,
                                     log_dir, budget))
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
        ref = Reference(fns, device, target_s=0.5 if cuda else 0.05, warmup=2)
        enc_times = ref.times
        ref.rep()
        phases = http_phases(args, servers, procs)
        cost = args.warmup + args.duration + 3 + 0.2 * procs
        for v, phase, conc, nproc, items in phases:
            if v not in servers or not budget.allows(cost + 5, f"{v} {phase}", result["skipped"]):
                continue
            say(f"[{v}] {phase} for {args.warmup:g}+{args.duration:g} s ({nproc} client process(es))")
            run_phase(args, result, v, phase, (conc, nproc, items), servers[v], jpeg_dir, domains, log_dir)
            ref.rep()
            save()

        bare_img_s = max_batch / statistics.median(enc_times["bare"])
        prompted_img_s = max_batch / statistics.median(enc_times["prompted"])
        result.update(bare_img_s=bare_img_s, prompted_runner_img_s=prompted_img_s, encoder_reps=len(enc_times["bare"]))
        summarise(result, args.concurrency)
        result["goals"] = goals(result)
        result["wall_s"] = round(time.monotonic() - t_run, 1)
        result["complete"] = True
        save()
        print_report(result, out_path)
        return 0
    finally:
        for proc, _ in servers.values():
            if proc.poll() is None:
                stop_server(proc)
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
