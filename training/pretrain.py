"""pretrain-tiny: contrastively pretrain the embedded tiny CLIP on a captioned synthetic corpus.

Mostly photos ("a photo of a red knife."), plus a few clean line drawings and clip art captioned
in their own words ("a drawing of a knife.", "a cartoon of a knife."), none of them one of the
world's styles. Zero-shot with the photo template then works on photos and degrades on other
styles, while the features still know them: the regime where prompts pay off. Captions repeat
in a batch, so identical captions count as positives of each other (multi-positive InfoNCE).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from promptclip import EMBEDDED_ARCH, PromptedCLIP, register_config, save_embedded_model
from promptclip.loading import EMBEDDED_WEIGHTS

from . import synth
from .augment import reencode
from .config import TINY_CLIP_CONFIG, PretrainConfig
from .runtime import setup_determinism

log = logging.getLogger(__name__)
# what the weights' header records; `reencoded` only when used, so the shipped file (built before it) rebuilds
RECIPE = ("seed", "images", "steps", "batch", "lr", "drawings", "clipart")


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def zero_shot_by_domain(model, preprocess, tokenizer, seed: int, per_class: int) -> dict[str, float]:
    """Top-1 accuracy of bare CLIP with the label prompts on fresh images of every style."""
    enc = PromptedCLIP(model)
    labels = list(synth.LABELS)
    with torch.no_grad():
        txt = enc.encode_text(tokenizer([synth.PROMPT.format(n) for n in labels]))
        out = {}
        for d in synth.DOMAINS:
            imgs, ys = [], []
            for li, lab in enumerate(labels):
                for i in range(per_class):
                    rng = synth.image_rng(seed + 1_000_003, d, lab, i)  # never the training world's images
                    imgs.append(preprocess(synth.render(d, lab, rng)))
                    ys.append(li)
            pred = (enc.encode_image(torch.stack(imgs)) @ txt.T).argmax(1)
            out[d] = round(float((pred == torch.tensor(ys)).float().mean()), 4)
    return out


def pretrain_tiny(cfg: PretrainConfig, threads: int = 2) -> dict:
    """Train, check zero-shot per style, save to the embedded weights path; returns the record."""
    setup_determinism(threads)
    register_config(EMBEDDED_ARCH, TINY_CLIP_CONFIG)
    torch.manual_seed(cfg.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(EMBEDDED_ARCH, pretrained=None)
    tokenizer = open_clip.get_tokenizer(EMBEDDED_ARCH)
    t0 = time.time()
    rng, trip = np.random.default_rng([cfg.seed, 77]), np.random.default_rng([cfg.seed, 78])
    imgs, caps, ys = [], [], []
    for _ in tqdm(range(cfg.images), desc="render", unit="img"):
        im, cap, li = synth.render_captioned(rng, mix=(cfg.drawings, cfg.clipart))
        if trip.random() < cfg.reencoded:
            im = reencode(im, trip)
        imgs.append(preprocess(im))
        caps.append(cap)
        ys.append(li)
    images = torch.stack(imgs)  # (N, 3, H, W)
    uniq = sorted(set(caps))
    cap_tokens = tokenizer(uniq)  # (U, ctx)
    cap_idx = torch.tensor([uniq.index(c) for c in caps])  # (N,)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, cfg.steps, max(1, cfg.steps // 20)))
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step")
    for step in bar:
        idx = torch.randint(0, len(images), (cfg.batch,), generator=gen)
        x = images[idx]
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        ci = cap_idx[idx]
        present, inv = torch.unique(ci, return_inverse=True)  # captions in this batch, each once
        img = F.normalize(model.encode_image(x), dim=-1)  # (B, E)
        txt = F.normalize(model.encode_text(cap_tokens[present]), dim=-1)  # (U', E)
        logits = model.logit_scale.exp() * img @ txt.T  # (B, U')
        pos = (inv[:, None] == torch.arange(len(present))[None, :]).float()  # (B, U')
        loss_i = F.cross_entropy(logits, inv)
        loss_t = -(F.log_softmax(logits.T, dim=1) * (pos.T / pos.T.sum(1, keepdim=True))).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    train_minutes = (time.time() - t0) / 60
    zs = zero_shot_by_domain(model, preprocess, tokenizer, cfg.seed, cfg.eval_per_class)
    log.info("zero-shot accuracy by style: %s", zs)
    texts = uniq + [synth.PROMPT.format(n) for n in synth.LABELS] + ["X"]
    used = sorted({int(t) for t in tokenizer(texts).flatten().tolist() if t != 0})
    record = {"zero_shot_accuracy": zs, "final_loss": round(loss.item(), 4),
              "recipe": {k: getattr(cfg, k) for k in RECIPE + (("reencoded",) if cfg.reencoded else ())},
              "eval": f"{cfg.eval_per_class} fresh images per label per style, prompt '{synth.PROMPT}'"}
    path = Path(cfg.out) if cfg.out else EMBEDDED_WEIGHTS
    save_embedded_model(model, TINY_CLIP_CONFIG, path, extra_metadata={
        "used_token_ids": json.dumps(used), "zero_shot_accuracy": json.dumps(zs),
        "pretrain": json.dumps(record["recipe"])})
    record["path"] = str(path)
    record["minutes"] = round(train_minutes, 2)
    return record
