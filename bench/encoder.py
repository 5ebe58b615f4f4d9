"""Bare open_clip `encode_image` vs the prompted image tower, same model, same batches, one run.

    python -m bench encoder --model ViT-B-32 --device cpu
    python -m bench encoder --model ViT-B-16 --device cuda --precision fp16

Variants (interleaved repetition by repetition, medians reported):
  bare            open_clip's own `model.encode_image` (normalised), the reference
  prompted        PromptedCLIP.encode_image: prompts written into one token buffer (production)
  naive           the same prompts concatenated to the sequence before every block (bench-only)
  *+graph         the same through promptclip.ImageRunner's CUDA graphs (CUDA only)
  prompted+compile  ImageRunner(compile=True) (with --compile)

Prompts are mixed-domain: a bank of --domains random prompt sets, gathered per sample by
task index inside the timed call, as the service does. The final JSON line is taken at the
largest batch size: prompted_over_bare, flop_ideal (bare FLOPs / prompted FLOPs counted with
torch.utils.flop_counter.FlopCounterMode), efficiency = prompted_over_bare / flop_ideal.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Callable

import open_clip
import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.timing import emit, interleaved, machine, median_ratio, table
from promptclip import ImageRunner, PromptedCLIP

log = logging.getLogger(__name__)


def naive_encode_image(enc: PromptedCLIP, images: Tensor, prompts: Tensor) -> Tensor:
    """Deep prompts the way prompt-learning code usually does it: a new sequence every layer.

    Drops the previous layer's prompt outputs and concatenates layer k's prompts: a full
    (B, L0 + n, W) copy per block. Same result as PromptedCLIP.encode_image.
    """
    tower = enc.vision
    x, kwargs = tower.embed(images.to(enc.dtype), prompts.shape[2])  # (B, L0, W)
    L0, depth = x.shape[1], prompts.shape[1]
    prompts = prompts.to(x.dtype)
    for k, blk in enumerate(tower.blocks):
        if k < depth:
            x = torch.cat([x[:, :L0], prompts[:, k]], dim=1)  # (B, L0 + n, W), fresh every layer
        x = blk(x, **kwargs)
    return F.normalize(tower.head(x[:, :L0]), dim=-1)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, attention included.

    nn.MultiheadAttention's inference fast path and the fused SDPA kernels are invisible to
    FlopCounterMode, so we count on the decomposed path (same arithmetic): fast path off,
    SDPA's math backend.
    """
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(fc.get_total_flops())


def variants(model, enc: PromptedCLIP, bank: Tensor, images: Tensor, idx: Tensor, *, naive: bool,
             runner: ImageRunner | None, compiled: ImageRunner | None) -> dict[str, Callable[[], object]]:
    """The timed calls for one batch; every prompted one gathers its prompts by task index."""
    fns: dict[str, Callable[[], object]] = {
        "bare": lambda: model.encode_image(images, normalize=True),
        "prompted": lambda: enc.encode_image(images, bank[idx]),
    }
    if naive:
        fns["naive"] = lambda: naive_encode_image(enc, images, bank[idx])
    if runner is not None:
        fns["bare+graph"] = lambda: runner(images)
        fns["prompted+graph"] = lambda: runner(images, bank[idx])
    if compiled is not None:
        fns["prompted+compile"] = lambda: compiled(images, bank[idx])
    return fns


def print_profiles(model, enc: PromptedCLIP, bank: Tensor, bs: int, size: int, dtype: torch.dtype,
                   device: torch.device, domains: int) -> None:
    """Where the time goes: torch.profiler's top ops by self time, bare vs prompted, one call each."""
    from torch.profiler import ProfilerActivity, profile

    images = torch.randn(bs, 3, size, size, device=device, dtype=dtype)
    idx = torch.arange(bs, device=device) % domains
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, fn in (("bare", lambda: model.encode_image(images, normalize=True)),
                     ("prompted", lambda: enc.encode_image(images, bank[idx]))):
        with torch.inference_mode():
            fn()
            with profile(activities=acts) as prof:
                fn()
        print(f"\nprofile: {name} at bs{bs}")
        print(prof.key_averages().table(sort_by=sort, row_limit=12))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench encoder", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init, real FLOPs)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--precision", default=None, help="fp32 | fp16 | bf16 (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch-sizes", default=None,
                   help="comma-separated (default: 1,4,16 on CPU; 1,8,32,128,256 on CUDA)")
    p.add_argument("--tokens", default="4,4", help="group,private prompt tokens per layer")
    p.add_argument("--depth", type=int, default=None, help="layers with fresh prompts (default: all)")
    p.add_argument("--domains", type=int, default=4, help="prompt sets mixed in every batch")
    p.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default: 9 CPU, 15 CUDA)")
    p.add_argument("--rep-seconds", type=float, default=None,
                   help="target seconds per repetition (default: 0.3 CPU, 0.2 CUDA)")
    p.add_argument("--no-naive", action="store_true", help="skip the concatenate-per-layer variant")
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph variants (CUDA only)")
    p.add_argument("--compile", action="store_true", help="add ImageRunner(compile=True)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: 1 on CPU: on a shared 2-core box, OpenMP barriers "
                        "waiting for a preempted second thread made bs1 4x slower, see RESULTS.md; 0: torch's)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, print torch.profiler's top ops for bare and prompted at the largest batch")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse(argv)
    device = torch.device(args.device)
    threads = args.threads if args.threads is not None else (0 if device.type == "cuda" else 1)
    if threads:
        torch.set_num_threads(threads)
    cuda = device.type == "cuda"
    precision = args.precision or ("fp16" if cuda else "fp32")
    sizes = [int(s) for s in (args.batch_sizes or ("1,8,32,128,256" if cuda else "1,4,16")).split(",")]
    reps = args.reps or (15 if cuda else 9)
    rep_s = args.rep_seconds or (0.2 if cuda else 0.3)
    n_group, n_private = (int(t) for t in args.tokens.split(","))
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    # the image tower only: open_clip's front door, without the tokenizer load_clip adds (SigLIP's is downloaded)
    model = open_clip.create_model(args.model, pretrained=None, device=device, precision=precision).eval()
    enc = PromptedCLIP(model)
    dtype, size = enc.dtype, to_2tuple(model.visual.image_size)[0]
    depth = enc.vision_layers if args.depth is None else min(args.depth, enc.vision_layers)
    n = n_group + n_private
    bank = (torch.randn(args.domains, depth, n, enc.vision_width, device=device) * 0.5).to(dtype)

    runner = ImageRunner(enc, buckets=sorted(set(sizes))) if cuda and not args.no_graphs else None
    compiled = ImageRunner(enc, buckets=sorted(set(sizes)), compile=True) if args.compile else None

    rows, per_batch = [], {}
    for bs in sizes:
        images = torch.randn(bs, 3, size, size, device=device, dtype=dtype)
        g = torch.Generator().manual_seed(bs)
        idx = torch.randperm(bs, generator=g).to(device) % args.domains  # mixed domains
        fns = variants(model, enc, bank, images, idx, naive=not args.no_naive, runner=runner, compiled=compiled)
        with torch.inference_mode():
            times = interleaved(fns, device, reps, rep_s)
        med = {k: statistics.median(v) for k, v in times.items()}
        res = {}
        for name, t in times.items():
            r = {"img_s": bs / med[name], "ms": 1e3 * med[name],
                 "over_bare": median_ratio(times["bare"], t)}  # throughput ratio = time(bare)/time(x)
            res[name] = r
            rows.append({"batch": bs, "variant": name, "img/s": r["img_s"], "ms/batch": r["ms"],
                         "over bare": r["over_bare"],
                         "spread %": 100 * (max(t) - min(t)) / med[name]})
        per_batch[bs] = res

    big = max(sizes)
    if args.profile:
        print_profiles(model, enc, bank, big, size, dtype, device, args.domains)
    one = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    bare_flops = count_flops(lambda: model.encode_image(one))
    prompted_flops = count_flops(lambda: enc.encode_image(one, bank[:1]))
    flop_ideal = bare_flops / prompted_flops
    top = per_batch[big]

    print(f"\nencoder bench: {args.model} on {device} ({precision}), prompts {n_group}+{n_private} tokens x "
          f"{depth} layers, {args.domains} domains mixed, {reps} interleaved reps")
    print(table(rows, ["batch", "variant", "img/s", "ms/batch", "over bare", "spread %"]))
    print(f"\nFLOPs per image: bare {bare_flops / 1e9:.3f} G, prompted {prompted_flops / 1e9:.3f} G "
          f"-> flop_ideal {flop_ideal:.4f}")
    print(f"at bs{big}: prompted_over_bare {top['prompted']['over_bare']:.4f}, "
          f"efficiency {top['prompted']['over_bare'] / flop_ideal:.4f}"
          + (f"; naive efficiency {top['naive']['over_bare'] / flop_ideal:.4f}" if "naive" in top else ""))

    result = {
        "bench": "encoder", "model": args.model, "device": str(device), "precision": precision,
        "batch": big, "tokens": {"group": n_group, "private": n_private, "depth": depth},
        "domains": args.domains, "reps": reps,
        "bare_img_s": top["bare"]["img_s"], "prompted_img_s": top["prompted"]["img_s"],
        "prompted_over_bare": top["prompted"]["over_bare"],
        "bare_gflops": bare_flops / 1e9, "prompted_gflops": prompted_flops / 1e9,
        "flop_ideal": flop_ideal, "efficiency": top["prompted"]["over_bare"] / flop_ideal,
        "per_batch": {str(b): {k: {"img_s": round(v["img_s"], 2), "ms": round(v["ms"], 3),
                                   "over_bare": round(v["over_bare"], 4)} for k, v in r.items()}
                      for b, r in per_batch.items()},
        "machine": machine(),
    }
    if "naive" in top:
        result.update(naive_img_s=top["naive"]["img_s"], naive_over_bare=top["naive"]["over_bare"],
                      naive_efficiency=top["naive"]["over_bare"] / flop_ideal)
    if "prompted+graph" in top:
        result.update(graph_bs1_ms=per_batch[min(sizes)]["prompted+graph"]["ms"],
                      eager_bs1_ms=per_batch[min(sizes)]["prompted"]["ms"],
                      bare_eager_bs1_ms=per_batch[min(sizes)]["bare"]["ms"])
    emit(result)
    return 0
