"""The server's CPU time per image beyond the model and the decode, on the embedded default.

    python -m bench overhead [--conc 16] [--batch-items 16] [--duration 10] [--workers auto]

Starts the real server (`python -m service`: the embedded tiny CLIP, the demo bundles of
./prompts_store, one torch thread, the review queue off) and drives it with 224x224 JPEGs of
mixed domains from separate client processes (bench.loadgen): `/classify` at `--conc`
connections, then `/classify/batch` with `--batch-items` images a request. Over each measured
window it reads the CPU time (user + system) of the server and every process under it from
/proc, and divides by the images answered in the window.

In this process, with one torch thread, it then measures what the server cannot avoid:

* the model: the prompted image tower with layer taps, at the mean batch size the server ran
  (read from its /metrics), plus the frozen tower's bare pass over the rows whose domain has a
  zero-shot guard (as the engine runs it), per image;
* the decode: PIL decode + the model's preprocess of the same JPEGs, per image.

`overhead = server CPU per image - model - decode`: HTTP, parsing, hand-offs between threads
and processes, scoring, decisions, JSON and metrics. Run it on a quiet machine: another job on
the second core changes how often threads hand the GIL over, and so the totals.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.fixtures import make_jpegs
from bench.loadgen import load_start, run_load
from bench.service import free_port, stop_server, wait_ready
from bench.timing import emit, machine, table

STORE = Path(__file__).resolve().parents[1] / "prompts_store"
TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: Path) -> tuple[int, int] | None:
    """(parent pid, user + system CPU ticks) from a /proc stat file (proc(5)); None once it is gone."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12])


def process_tree(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (role, user + system CPU seconds) of process `root` and its live descendants; role is
    engine, front end or server (the one process, or the supervisor of the others)."""
    procs: dict[int, tuple[int, int]] = {}  # pid -> (parent, CPU ticks)
    for path in Path("/proc").glob("[0-9]*/stat"):
        if (stat := _stat(path)) is not None:
            procs[int(path.parent.name)] = stat
    out = {}
    for pid, (_, ticks) in procs.items():
        p = pid
        while p in procs and p != root:
            p = procs[p][0]
        if p == root:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                cmd = b""
            role = "engine" if b"service.engine_server" in cmd else "front end" if b"service.frontend" in cmd \
                else "server"
            out[pid] = (role, ticks / TICK)
    return out


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of process `root` and all its live descendants (the server's processes)."""
    return sum(cpu for _, cpu in process_tree(root).values())


def thread_cpu_s(root: int) -> dict[str, float]:
    """`role: thread` -> CPU seconds, over the server's processes: each process's main thread (`event
    loop`), each pool's `name_N` workers under `name` (the service's `model` and `decode`, named by
    service.threads) and the unnamed rest (`other`)."""
    out: dict[str, float] = {}
    for pid, (role, _) in process_tree(root).items():
        for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
            try:
                comm = (task / "comm").read_text().strip()
            except OSError:
                continue
            if (stat := _stat(task / "stat")) is None:
                continue
            pool = re.fullmatch(r"(.+)_\d+", comm)
            name = f"{role}: " + ("event loop" if int(task.name) == pid else pool.group(1) if pool else "other")
            out[name] = out.get(name, 0.0) + stat[1] / TICK
    return out


def busy_shares(before: dict, after: dict, seconds: float) -> list[tuple[str, int, float]]:
    """(role, pid, share of one core) per process over a window, busiest first: the bottleneck leads."""
    rows = [(role, pid, (cpu - before.get(pid, (role, 0.0))[1]) / seconds) for pid, (role, cpu) in after.items()]
    return sorted(rows, key=lambda r: -r[2])


def server_counters(url: str) -> dict[str, float]:
    """The server's batch-size histogram (sum, count) and its own model / decode CPU counters (absent: 0)."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text

    def get(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    return {k: get(f"moderation_{k}") for k in ("batch_size_sum", "batch_size_count", "model_cpu_seconds_total",
                                                  "decode_cpu_seconds_total")}


def measure_phase(url: str, pid: int, port: int, jpeg_dir: Path, domains: list[str], conc: int, items: int,
                  warmup_s: float, duration_s: float) -> dict:
    """Load for warmup + duration; the server's CPU seconds and batches over the measured window."""
    marks: dict[str, tuple[float, dict]] = {}

    def sample(at: float, key: str) -> None:
        time.sleep(max(0.0, at - time.time()))
        marks[key] = (tree_cpu_s(pid), server_counters(url), thread_cpu_s(pid))

    start = load_start(2)
    threads = [threading.Thread(target=sample, args=(start + warmup_s, "t0")),
               threading.Thread(target=sample, args=(start + warmup_s + duration_s, "t1"))]
    for t in threads:
        t.start()
    load = run_load(port, jpeg_dir, domains, conc, 2, warmup_s, duration_s, items, start=start)
    for t in threads:
        t.join()
    (c0, m0, t0), (c1, m1, t1) = marks["t0"], marks["t1"]
    d = {k: m1[k] - m0[k] for k in m0}
    images = max(load["img_s"] * duration_s, 1)
    inside = d["model_cpu_seconds_total"] + d["decode_cpu_seconds_total"]
    return {"images": images, "server_cpu_s": c1 - c0, "cpu_us_per_image": 1e6 * (c1 - c0) / images,
            "threads_us": {k: 1e6 * (v - t0.get(k, 0.0)) / images for k, v in t1.items() if v > t0.get(k, 0.0)},
            "counted_us": {"model": 1e6 * d["model_cpu_seconds_total"] / images,
                           "decode": 1e6 * d["decode_cpu_seconds_total"] / images},
            "mean_batch": d["batch_size_sum"] / max(d["batch_size_count"], 1), "img_s": load["img_s"],
            "server_model_decode_us": 1e6 * inside / images if inside else None,
            "p50_ms": load["p50_ms"], "errors": load["errors"], "first_error": load["first_error"]}


def model_and_decode_us(jpegs: list[bytes], batch: int, seconds: float = 2.0) -> tuple[float, float]:
    """CPU µs per image of the model (the prompted tower, taps on, mixed domains, `batch` a forward, the
    low-passed domains' blur, and the bare pass over the guarded domains' rows) and of the decode, each the median of 5 runs of about `seconds` / 5."""
    from promptclip import ModelSpec, PromptedCLIP, PromptStore, load_clip
    from promptclip.banks import guard_weight
    from promptclip.images import decode_rgb
    from promptclip.runner import ModelRunner

    clip = load_clip(ModelSpec(device="cpu"))
    enc = PromptedCLIP(clip.model)
    runner = ModelRunner(enc)
    store = PromptStore(STORE)
    bundles = [store.load_current(d, clip.info) for d in store.domains() if not d.startswith("_")]
    pixels = [clip.preprocess(decode_rgb(b)) for b in jpegs]
    rows = torch.arange(batch) % len(bundles)
    prompts = torch.stack([b.vision_prompts() for b in bundles])[rows]
    images = torch.stack([pixels[i % len(pixels)] for i in range(batch)])
    guarded = torch.tensor([guard_weight(bundles[r].manifest.decision) > 0 for r in rows.tolist()])
    bare_images = images[guarded]

    sigmas = [bundles[r].lowpass for r in rows.tolist()]

    def forward() -> None:
        runner.prompted(images, prompts, sigmas)  # as the bundles read their images
        runner.bare(bare_images)  # as the engine runs it (nothing when no row is guarded)

    def per_image(fn, n_images: int) -> float:
        runs = []
        for _ in range(5):
            t, done = time.process_time(), 0
            while time.process_time() - t < seconds / 5 or not done:
                fn()
                done += n_images
            runs.append(1e6 * (time.process_time() - t) / done)
        return statistics.median(runs)

    with torch.inference_mode():
        forward()  # warm-up
        model_us = per_image(forward, batch)
    decode_us = per_image(lambda: [clip.preprocess(decode_rgb(b)) for b in jpegs[:16]], 16)
    return model_us, decode_us


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench overhead", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--conc", type=int, default=16, help="connections for single-image /classify")
    p.add_argument("--batch-items", type=int, default=16, help="images per /classify/batch request (0: skip)")
    p.add_argument("--batch-conc", type=int, default=4, help="concurrent /classify/batch requests")
    p.add_argument("--images", type=int, default=64, help="distinct 224x224 JPEGs cycled through")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per phase")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--workers", default=None, help="server MODERATION_WORKERS (default: the server's)")
    p.add_argument("--server-log", default=None, help="write the server's output here (default: discarded)")
    p.add_argument("--checkout", default=None, type=Path,
                   help="serve from another checkout of this repository (a before/after comparison; default: this one)")
    return p.parse_args(argv)


def thread_table(phases: dict[str, dict]) -> str:
    """Per phase, each thread group's CPU µs per image; the model and decode pools beside the CPU the
    server counts as model and decode in them, so what each thread spends beyond its work shows."""
    groups = sorted({k for ph in phases.values() for k in ph["threads_us"]})
    rows = []
    for name, ph in phases.items():
        row = {"path": name}
        for g in groups:
            us = ph["threads_us"].get(g, 0.0)
            counted = next((c for kind, c in ph["counted_us"].items() if g.endswith(f": {kind}")), None)
            row[g] = f"{us:,.0f}" + ("" if counted is None else f" ({counted:,.0f})")
        rows.append(row)
    return table(rows, ["path", *groups])


def start_server(port: int, workers: str | None, log_path: str | None, checkout: Path) -> subprocess.Popen:
    env = dict(os.environ, MODERATION_PORT=str(port), MODERATION_HOST="127.0.0.1", MODERATION_TORCH_THREADS="1",
               MODERATION_REVIEW_DB="off", MODERATION_ACCESS_LOG="false", MODERATION_LOG_LEVEL="warning",
               MODERATION_MAX_QUEUE="4096", MODERATION_REQUEST_TIMEOUT_S="120")
    if workers is not None:
        env["MODERATION_WORKERS"] = workers
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "service"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=checkout)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    domains = sorted(d.name for d in STORE.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    jpegs = make_jpegs(args.images, 224, 224)
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    for i, b in enumerate(jpegs):
        (tmp / f"{i:03d}.jpg").write_bytes(b)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, args.workers, args.server_log, (args.checkout or STORE.parent).resolve())
    phases = {}
    try:
        wait_ready(url, proc, timeout_s=300)
        plan = [("/classify", args.conc, 0)] + ([("/classify/batch", args.batch_conc, args.batch_items)]
                                                 if args.batch_items else [])
        for name, conc, items in plan:
            print(f"[run] {name} c={conc}{f' x{items}' if items else ''}: {args.warmup:g}+{args.duration:g} s",
                  flush=True)
            phases[name] = measure_phase(url, proc.pid, port, tmp, domains, conc, items, args.warmup, args.duration)
    finally:
        stop_server(proc)
    rows = []
    for name, ph in phases.items():
        model_us, decode_us = model_and_decode_us(jpegs, max(1, round(ph["mean_batch"])))
        inside = ph["server_model_decode_us"]
        ph.update(model_us=model_us, decode_us=decode_us,
                  overhead_us=ph["cpu_us_per_image"] - model_us - decode_us,
                  overhead_in_server_us=None if inside is None else ph["cpu_us_per_image"] - inside)
        rows.append({"path": name, "img/s": ph["img_s"], "mean batch": ph["mean_batch"],
                     "server CPU µs/img": ph["cpu_us_per_image"], "model µs/img": model_us,
                     "decode µs/img": decode_us, "overhead µs/img": ph["overhead_us"],
                     "server's model+decode": "" if inside is None else inside,
                     "overhead (server's own)": "" if inside is None else ph["overhead_in_server_us"],
                     "errors": ph["errors"]})
    print("\nserver CPU time per image (all server processes), embedded default, 224x224 JPEGs, mixed domains;")
    print("model and decode measured in this process (overhead), and by the server itself where it counts them")
    print(table(rows, ["path", "img/s", "mean batch", "server CPU µs/img", "model µs/img", "decode µs/img",
                       "overhead µs/img", "server's model+decode", "overhead (server's own)", "errors"]))
    print("\nthe same server CPU per image, by thread (µs); in brackets what the server counts as model and decode")
    print(thread_table(phases))
    emit({"bench": "overhead", "workers": args.workers, "phases": phases, "machine": machine(),
          "load_avg": os.getloadavg()})
    return 0 if all(ph["errors"] == 0 for ph in phases.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
