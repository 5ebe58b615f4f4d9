"""In-process measurements of `python -m bench gpu` (the HTTP phases run in bench/gpu.py).

* `scrape` / `batch_stats`: the server's Prometheus batch counters before and after a phase;
* `run_encoder_bench`: P1, `python -m bench encoder` in process;
* `decode_costs`: PIL vs nvjpeg (single and batched) per image;
* `p3_breakdown`: one lone request's decode and engine time through the service's own objects.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image


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
