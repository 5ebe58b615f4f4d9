"""Multi-task prompt training: group-shared + task-private prompts, balanced task sampling.

One loop serves every trained variant, the grouping run and torchrun (DDP, gloo on CPU /
nccl on CUDA): at world size 1 it is the same code without the wrapper. Each rank takes an
equal slice of every task's samples, so DDP's averaged gradient equals the full-batch one.

A run directory holds ``last.pt`` (rewritten after every epoch; ``--resume`` continues from it,
bit-for-bit) and ``final.pt`` (prompts + everything needed to rebuild them, never CLIP).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from promptclip import (
    MultiTaskCLIP,
    PromptConfig,
    PromptedCLIP,
    TaskPrompts,
    label_embeddings,
    label_tokens,
    measure_stream_rms,
)

from .augment import flip_shift, trip_variants
from .config import PromptSizes, SplitConfig, TrainConfig, to_dict
from .consistency import Consistency
from .data import ImageCache, TaskData, fingerprint, items_tensors
from .decisions import image_features
from .runtime import Dist, RunContext

log = logging.getLogger(__name__)
PROGRESS = True  # a bar per training run; off in training.parallel's workers (the parent shows one for all)

TRAINED_VARIANTS = ("private_only", "all_shared", "group_private", "global_group_private")


def variant_layout(variant: str, tasks: list[str], groups: list[list[str]],
                   sizes: PromptSizes) -> tuple[list[list[str]], PromptConfig]:
    """Groups and token counts of a variant. Every variant gives a task the same prompt length."""
    n, depth = sizes.group_tokens + sizes.private_tokens, sizes.depth or None
    if variant == "private_only":
        return [[t] for t in tasks], PromptConfig(0, n, depth)
    if variant == "all_shared":
        return [list(tasks)], PromptConfig(n, 0, depth)
    if variant in ("group_private", "random_groups"):  # random_groups: the same layout on a random partition
        return [list(g) for g in groups], PromptConfig(sizes.group_tokens, sizes.private_tokens, depth)
    if variant == "global_group_private":
        return [list(tasks)], PromptConfig(sizes.group_tokens, sizes.private_tokens, depth)
    if variant == "zero_shot":
        return [list(tasks)], PromptConfig(0, 0, depth)
    raise ValueError(f"unknown variant {variant!r}; known: zero_shot, {', '.join(TRAINED_VARIANTS)}")


@dataclass
class FewShot:
    """The training shots of every task: (N, 3, H, W) images, labels, task indices."""

    images: Tensor
    labels: Tensor
    tasks: Tensor
    trips: Tensor | None = None  # (V, N, 3, H, W): each shot after V client trips (`trip_variants`), or None

    def by_task(self, t: int) -> Tensor:
        return (self.tasks == t).nonzero().flatten()


TRIPS_PER_SHOT = 4  # re-encoded copies of each shot, drawn once, that `reencoded_shots` draws from
StreamRMS = dict[str, Tensor]  # per tower: the frozen residual stream's RMS entering each layer, (L,)


def build_model(encoder: PromptedCLIP, tokenizer, data: TaskData, groups: list[list[str]], pcfg: PromptConfig,
                shots: FewShot, init_scale: float, seed: int,
                lowpass: dict[str, float] | None = None) -> tuple[MultiTaskCLIP, StreamRMS]:
    """Prompts initialised per layer at the frozen stream's RMS (the scale that keeps CLIP working);
    `lowpass`: the tasks whose images the prompted pass reads blurred (TrainConfig.input_lowpass).

    Returns the model and the per-layer stream RMS, which `run_training` uses as step sizes.
    """
    unknown = sorted(set(lowpass or {}) - set(data.tasks))
    if unknown:
        raise ValueError(f"--lowpass-domains names {unknown}, which the data does not have (domains: {data.tasks})")
    prompts = TaskPrompts(data.tasks, groups, pcfg, encoder.vision_width, encoder.vision_layers,
                          encoder.text_width, encoder.text_layers)
    texts = [p for d in data.domains for p in d.prompts]
    device = encoder.logit_scale.device
    tokens = label_tokens(tokenizer, texts, pcfg.tokens).to(device)
    rms_v, rms_t = measure_stream_rms(encoder, shots.images[:64].to(device), tokens)
    prompts.reset_parameters(rms_v * init_scale, rms_t * init_scale, generator=torch.Generator().manual_seed(seed))
    rms = {"vision": rms_v.cpu(), "text": rms_t.cpu()}
    return MultiTaskCLIP(encoder, prompts, data.label_texts, tokenizer, lowpass).to(device), rms


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class LayerScaledStep:
    """Scale each layer's optimizer update by the frozen stream's RMS at that layer.

    Adam moves every element by about `lr` per step whatever its scale, but the text stream's
    RMS is ~0.03 at layer 0 and ~2-3 deeper: one absolute lr is chaos at layer 0 and a crawl
    deeper. Multiplying each layer's update by its RMS makes `lr` a relative step size.
    """

    def __init__(self, prompts: TaskPrompts, rms: StreamRMS | None = None):
        self.scales = []
        for name, prm in prompts.named_parameters():
            tower = "vision" if name.startswith("vision") else "text"
            scale = rms[tower][: prm.shape[0]].to(prm.device) if rms is not None else torch.ones(prm.shape[0])
            self.scales.append((prm, scale.view(-1, 1, 1)))

    def step(self, opt: torch.optim.Optimizer) -> None:
        before = [p.detach().clone() for p, _ in self.scales]
        opt.step()
        with torch.no_grad():
            for (p, scale), old in zip(self.scales, before, strict=True):
                p.copy_(old + (p - old) * scale)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _draw_batch(shots: FewShot, per_task: list[Tensor], cfg: TrainConfig, gen: torch.Generator,
                dist: Dist) -> tuple[Tensor, Tensor, Tensor]:
    """Images, task indices and labels of this rank's part of one step's batch.

    Every rank draws the same full batch (`batch_per_task` per task, augmented), then keeps its
    equal slice of each task, so the DDP-averaged gradient equals the full-batch one.
    """
    picks = [idx[torch.randint(0, len(idx), (cfg.batch_per_task,), generator=gen)] for idx in per_task]
    full = torch.cat(picks)
    x = shots.images[full]
    if shots.trips is not None and cfg.reencoded_shots > 0:  # draws only when on: default runs stay bit-for-bit
        swap = torch.rand(len(full), generator=gen) < cfg.reencoded_shots
        trip = torch.randint(0, len(shots.trips), (len(full),), generator=gen)
        x = torch.where(swap[:, None, None, None], shots.trips[trip, full], x)
    if cfg.augment:
        x = flip_shift(x, gen)
    part = cfg.batch_per_task // dist.world
    mine = torch.cat([torch.arange(t * cfg.batch_per_task + dist.rank * part,
                                   t * cfg.batch_per_task + (dist.rank + 1) * part) for t in range(len(picks))])
    return x[mine], shots.tasks[full][mine], shots.labels[full][mine]


def run_training(model: MultiTaskCLIP, shots: FewShot, cfg: TrainConfig, *, rms: StreamRMS | None = None,
                 out_dir: Path | None = None, resume: bool = False, dist: Dist | None = None, stop_after: int = 0,
                 hook: Callable[[int, MultiTaskCLIP], None] | None = None, desc: str = "train",
                 consistency: Consistency | None = None) -> bool:
    """Train `model.prompts` in place. Returns False if stopped early by `stop_after` epochs.

    `rms` (from `build_model`) scales each layer's step (`LayerScaledStep`); None: unscaled.
    `consistency` adds PromptSRC's pull towards the frozen CLIP to the cross-entropy.
    `hook(step, model)` runs after `step` optimizer steps (1..steps), e.g. gradient snapshots.
    """
    dist = dist or Dist()
    if cfg.batch_per_task % dist.world:
        raise ValueError(f"batch_per_task={cfg.batch_per_task} must be divisible by world size {dist.world}")
    device = model.encoder.logit_scale.device
    prompts = model.prompts
    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    opt = torch.optim.AdamW(prompts.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup))
    stepper = LayerScaledStep(prompts, rms)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start = 0
    ckpt = out_dir / "last.pt" if out_dir is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        prompts.load_state_dict(state["prompts"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        start = state["step"]
        log.info("resumed %s at step %d", out_dir, start)
    per_task = [shots.by_task(t) for t in range(len(model.tasks))]
    epoch_len = math.ceil(cfg.steps / max(1, cfg.epochs))
    net.train()
    bar = tqdm(range(start, cfg.steps), desc=desc, unit="step", disable=not (dist.is_main and PROGRESS), leave=False)
    for step in bar:
        xb, tb, yb = (t.to(device) for t in _draw_batch(shots, per_task, cfg, gen, dist))
        out = net(xb, tb, return_features=consistency is not None)
        logits = out[0] if consistency is not None else out
        loss = F.cross_entropy(logits, yb)
        if consistency is not None:
            _, img, text, present, seen = out
            loss = loss + consistency.loss(model, seen, tb, logits, img, text, present)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        stepper.step(opt)
        sched.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if hook is not None:
            hook(step + 1, model)
        done = step + 1
        if ckpt is not None and (done % epoch_len == 0 or done == cfg.steps):
            if dist.is_main:
                _atomic_save({"prompts": prompts.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "generator": gen.get_state(), "step": done}, ckpt)
            if stop_after and done // epoch_len >= stop_after and done < cfg.steps:
                log.info("stopping after epoch %d (step %d) as asked", done // epoch_len, done)
                return False
    net.eval()
    return True


def class_means(feats: Tensor, labels: Tensor, n: int) -> Tensor:
    """(n, E) normalised mean of the features of each label 0..n-1."""
    return F.normalize(torch.stack([feats[labels == c].mean(0) for c in range(n)]), dim=-1)


@torch.no_grad()
def fit_label_cache(rc: RunContext, model: MultiTaskCLIP, shots: FewShot) -> None:
    """Give `model` its label cache: per task, the class means of its shots' prompted image features
    (fp16, as a bundle stores them) and the weight among `rc.train.cache_weights` with the best
    accuracy on the task's calibration split (validation + unused pool; never test)."""
    model.set_label_cache({}, {})
    cache, weights = {}, {}
    for ti, dom in enumerate(rc.data.domains):
        mine = shots.tasks == ti
        cache[dom.name] = class_means(image_features(model, ti, shots.images[mine]), shots.labels[mine],
                                      len(dom.labels)).half()
        calib = dom.calibration(rc.split.shots, rc.train.seed)
        if not calib:  # nothing to choose on: the smallest candidate weight (text alone when 0 is one)
            log.warning("%s: no calibration image to choose the label cache weight on; using %g", dom.name,
                        min(rc.train.cache_weights))
            weights[dom.name] = min(rc.train.cache_weights)
            continue
        x = image_features(model, ti, rc.cache.load([p for p, _ in calib]))
        y = torch.tensor([li for _, li in calib])
        text = model.text_features(dom.name).float().cpu()
        acc = {w: float(((x @ label_embeddings(text, cache[dom.name].float(), w).T).argmax(1) == y).float().mean())
               for w in sorted(rc.train.cache_weights)}
        weights[dom.name] = max(acc, key=lambda w: (acc[w], -w))
    model.set_label_cache(cache, weights)


def load_shots(cache: ImageCache, data: TaskData, split: SplitConfig, seed: int, trips: int = 0) -> FewShot:
    """The training shots of seed `seed`; with `trips`, also each shot after that many client trips."""
    shots = FewShot(*items_tensors(cache, data, "shots", seed=seed, shots=split.shots))
    if trips:
        paths = [p for d in data.domains for p, _ in d.shots(split.shots, seed)]  # items_tensors' order
        shots.trips = trip_variants(cache.preprocess, paths, trips, seed)
    return shots


def run_key(variant: str, groups, pcfg: PromptConfig, cfg: TrainConfig, split: SplitConfig, data: TaskData,
            base: dict) -> dict:
    """Everything a trained result depends on: a cached run is reused only if this matches."""
    return {"variant": variant, "groups": groups, "prompt": asdict(pcfg), "train": to_dict(cfg),
            "split": to_dict(split), "data": fingerprint(data), "base": base, "tasks": data.tasks}


def train_variant(rc: RunContext, variant: str, groups: list[list[str]], out_dir: Path, *, resume: bool = False,
                  stop_after: int = 0, reuse: bool = True) -> MultiTaskCLIP | None:
    """Train one variant into `out_dir` (final.pt) with `rc.train` (its seed); reuse a finished run with the same key.

    Returns the model with trained prompts, or None if `stop_after` interrupted it.
    """
    cfg, data = rc.train, rc.data
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layout, pcfg = variant_layout(variant, data.tasks, groups, rc.sizes)
    key = run_key(variant, layout, pcfg, cfg, rc.split, data, rc.clip.info.to_dict())
    torch.manual_seed(cfg.seed)
    shots = load_shots(rc.cache, data, rc.split, cfg.seed, TRIPS_PER_SHOT if cfg.reencoded_shots > 0 else 0)
    model, rms = build_model(rc.encoder, rc.clip.tokenizer, data, layout, pcfg, shots, cfg.init_scale, cfg.seed,
                             cfg.input_lowpass())
    final = out_dir / "final.pt"
    if reuse and final.is_file():
        saved = torch.load(final, map_location="cpu", weights_only=False)
        if saved["key"] == key:
            model.prompts.load_state_dict(saved["prompts"])
            model.set_label_cache(saved.get("label_cache", {}), saved.get("cache_weights", {}))
            log.info("reusing finished run %s", out_dir)
            return model
    if variant != "zero_shot":
        finished = run_training(model, shots, cfg, rms=rms, out_dir=out_dir, resume=resume, dist=rc.dist,
                                stop_after=stop_after, desc=f"{variant} s{cfg.seed}",
                                consistency=Consistency.build(model, cfg))
        if not finished:
            return None
    if variant != "zero_shot" and any(cfg.cache_weights):
        fit_label_cache(rc, model, shots)
    if rc.dist.is_main:
        _atomic_save({"key": key, "prompts": model.prompts.state_dict(), "label_cache": model.label_cache,
                      "cache_weights": model.cache_weights,
                      "labels": {d.name: [asdict(lab) for lab in d.labels] for d in data.domains},
                      "trainable_params": model.prompts.num_trainable()}, final)
    return model


def load_final(path: Path, encoder: PromptedCLIP, tokenizer, data: TaskData) -> tuple[MultiTaskCLIP, dict]:
    """Rebuild a trained MultiTaskCLIP from a run's final.pt."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    key = saved["key"]
    if key["tasks"] != data.tasks:
        raise ValueError(f"{path} was trained on tasks {key['tasks']}, data has {data.tasks}")
    pcfg = PromptConfig(**key["prompt"])
    prompts = TaskPrompts(data.tasks, key["groups"], pcfg, encoder.vision_width, encoder.vision_layers,
                          encoder.text_width, encoder.text_layers)
    prompts.load_state_dict(saved["prompts"])
    device = encoder.logit_scale.device
    trained = key["train"]  # runs from before the low-pass have none
    lowpass = TrainConfig(lowpass_domains=trained.get("lowpass_domains", []),
                          lowpass_sigma=trained.get("lowpass_sigma", 0.0)).input_lowpass()
    model = MultiTaskCLIP(encoder, prompts, data.label_texts, tokenizer, lowpass).to(device)
    model.set_label_cache(saved.get("label_cache", {}), saved.get("cache_weights", {}))
    return model, saved


@torch.no_grad()
def predict_logits(model: MultiTaskCLIP, cache: ImageCache, data: TaskData, items: dict[str, list[tuple[Path, int]]],
                   keep: bool = True, chunk: int = 256) -> dict[str, tuple[Tensor, Tensor]]:
    """Per task named in `items`: (label logits (N, C), true labels (N,)) on those (path, label) images."""
    model.eval()
    device = model.encoder.logit_scale.device
    out = {}
    for ti, dom in enumerate(data.domains):
        if dom.name not in items:
            continue
        mine, logits = items[dom.name], [torch.zeros(0, len(dom.labels))]
        for i in range(0, len(mine), chunk):
            part = mine[i:i + chunk]
            x = cache.load([p for p, _ in part], cache=keep).to(device)
            logits.append(model(x, torch.full((len(part),), ti, device=device))[:, : len(dom.labels)].float().cpu())
        out[dom.name] = (torch.cat(logits), torch.tensor([li for _, li in mine], dtype=torch.long))
    return out


def predict(model: MultiTaskCLIP, cache: ImageCache, data: TaskData, split: str, keep: bool = True,
            chunk: int = 256) -> dict[str, tuple[Tensor, Tensor]]:
    """Per task: (probabilities (N, C), true labels (N,)) on a split."""
    items = {dom.name: getattr(dom, split) for dom in data.domains}
    return {d: (z.softmax(-1), y) for d, (z, y) in predict_logits(model, cache, data, items, keep, chunk).items()}


def accuracy(preds: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    return {d: float((p.argmax(1) == y).float().mean()) for d, (p, y) in preds.items()}
