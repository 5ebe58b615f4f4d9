"""The backlog scorer's local engine against bare `encode_image`, and the Ray engine against local.

    python -m bench backlog --model ViT-B-32 --device cpu
    python -m bench backlog --model ViT-B-16 --device cuda --batch-size 256 --images 4096

What it does:
  1. a random-init CLIP (real FLOPs) saved as a local checkpoint, one bundle with the full
     decision rule (bench.fixtures.publish_bundles: calibrated labels, 256 negative labels, a
     scope bank), and --images photo-like JPEGs written to a folder;
  2. interleaved repetitions (bench.timing) of:
       bare   open_clip `model.encode_image` over the same images, preprocessed once, in batches
              of --batch-size: the model alone, no decode, no prompts;
       local  `python -m backlog score`'s local engine over the folder into a fresh output:
              listing, file reads, decode + preprocess (--decode-workers threads), the prompted
              image tower, the decision rule, Parquet shards; the model is loaded once, outside;
       ray    the Ray engine over the same folder (a local Ray started once, outside the timing;
              --ray-actors actors, each loading the model once per run, inside the timing).

local_over_bare = bare seconds / local seconds (median of per-repetition ratios; goal >= 0.85).
ray_over_local likewise; ray_fixed_s = a Ray run's seconds beyond what local needs for the same
images, i.e. its per-run startup (actor start, model load, scheduling).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from backlog import ScoreConfig, Scorer, score_local
from bench.fixtures import make_jpegs, publish_bundles, save_random_clip
from bench.timing import emit, interleaved, machine, median_ratio, table
from promptclip import ModelSpec, load_clip

DOMAIN = "photo"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench backlog", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init, real FLOPs)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--tokens", default="4,4", help="group,private prompt tokens per layer of the bundle")
    p.add_argument("--images", type=int, default=64, help="JPEGs in the folder scored every repetition")
    p.add_argument("--image-size", default="640x480", help="JPEG width x height")
    p.add_argument("--batch-size", type=int, default=16, help="model batch, bare and backlog alike")
    p.add_argument("--decode-workers", type=int, default=ScoreConfig.decode_workers, help="backlog decode threads")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 on CPU as the other benches: see bench encoder --help; 0: torch's)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    p.add_argument("--ray-actors", type=int, default=1,
                   help="Ray scoring actors (1: the same model threads as local, so the ratio is Ray's overhead)")
    return p.parse_args(argv)


def setup(args: argparse.Namespace, tmp: Path) -> tuple[ScoreConfig, Path]:
    """Checkpoint, store and image folder; the config the engines run with (output set per run)."""
    ckpt = save_random_clip(args.model, tmp / "model.safetensors")
    clip = load_clip(ModelSpec(model=args.model, pretrained=str(ckpt), device=args.device))
    n_group, n_private = (int(t) for t in args.tokens.split(","))
    publish_bundles(clip, tmp / "store", [DOMAIN], n_group, n_private)
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    folder = tmp / "images"
    folder.mkdir()
    for i, data in enumerate(make_jpegs(args.images, width, height)):
        (folder / f"{i:06d}.jpg").write_bytes(data)
    cfg = ScoreConfig(input=folder, out=tmp / "out", domain=DOMAIN, store=tmp / "store", model=args.model,
                      pretrained=str(ckpt), device=args.device, batch_size=args.batch_size,
                      decode_workers=args.decode_workers, threads=args.threads, progress=False,
                      ray_concurrency=args.ray_actors)
    return cfg, folder


def fresh_out(cfg: ScoreConfig, name: str) -> ScoreConfig:
    """The same run into an empty output folder (every repetition scores everything)."""
    out = cfg.out.parent / name
    shutil.rmtree(out, ignore_errors=True)
    return ScoreConfig(**{**cfg.__dict__, "out": out})


def variants(args, cfg: ScoreConfig, scorer: Scorer) -> dict:
    """The timed calls: each processes all --images images once."""
    pixels = torch.stack([scorer.pixels(p.read_bytes()) for p in sorted(cfg.input.iterdir())])  # (N, 3, H, W)
    pixels = pixels.to(scorer.device, scorer.encoder.dtype)
    model = scorer.clip.model

    def bare():
        with torch.inference_mode():
            for s in range(0, len(pixels), args.batch_size):
                model.encode_image(pixels[s:s + args.batch_size], normalize=True)

    fns = {"bare": bare, "local": lambda: score_local(fresh_out(cfg, "local"), scorer)}
    if not args.no_ray:
        import ray

        from backlog.ray_engine import score_ray

        if not ray.is_initialized():
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-run execution plan in the bench output
        fns["ray"] = lambda: score_ray(fresh_out(cfg, "ray"))
    return fns


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
    try:
        print(f"[setup] random {args.model}, 1 bundle, {args.images} JPEGs {args.image_size} -> {tmp}", flush=True)
        cfg, _ = setup(args, tmp)
        scorer = Scorer(cfg)
        fns = variants(args, cfg, scorer)
        print(f"[run] {', '.join(fns)}: {args.reps} interleaved reps of {args.images} images each", flush=True)
        times = interleaved(fns, args.device, args.reps, target_s=0.0, warmup=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: args.images / v for k, v in med.items()}
    rows = [{"variant": k, "img/s": rate[k], "s/run": med[k], "over bare": median_ratio(times["bare"], times[k]),
             "spread %": 100 * (max(times[k]) - min(times[k])) / med[k]} for k in times]
    print(f"\nbacklog bench: {args.model} on {args.device}, bundle {args.tokens} tokens, {args.images} JPEGs "
          f"{args.image_size}, batch {args.batch_size}, {args.decode_workers} decode workers, "
          f"torch threads {torch.get_num_threads()}")
    print(table(rows, ["variant", "img/s", "s/run", "over bare", "spread %"]))
    result = {"bench": "backlog", "model": args.model, "device": args.device, "images": args.images,
              "image_size": args.image_size, "batch_size": args.batch_size, "decode_workers": args.decode_workers,
              "tokens": args.tokens, "reps": args.reps, "img_s": rate,
              "local_over_bare": median_ratio(times["bare"], times["local"]), "machine": machine()}
    if "ray" in times:
        result["ray_over_local"] = median_ratio(times["local"], times["ray"])
        result["ray_fixed_s"] = med["ray"] - med["local"]
        print(f"\nlocal_over_bare {result['local_over_bare']:.3f}; ray_over_local {result['ray_over_local']:.3f} "
              f"(a Ray run costs {result['ray_fixed_s']:.1f} s more than local for the same images)")
    emit(result)
    return 0
