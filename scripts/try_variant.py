"""Quick single-seed experiments (how the "what was tried" numbers in docs/training.md were made).

Usage: G=2 P=2 SHOTS=4 python scripts/try_variant.py DATA VARIANT[,key=value...] ...
  e.g. python scripts/try_variant.py data/w1 zero_shot "group_private,lr=0.05,init_scale=0.1"
Trains each variant (planted groups of the synthetic world, TrainConfig overrides as key=value)
on the embedded tiny CLIP and prints test accuracy per domain and the mean.
"""

import logging
import os
import sys
import time

from training.config import ModelConfig, PromptSizes, SplitConfig, TrainConfig
from training.data import ImageCache, load_tasks
from training.runtime import RunContext, load_encoder, setup_determinism
from training.synth import GROUPS
from training.train import accuracy, predict, train_variant

logging.basicConfig(level=logging.WARNING)
setup_determinism(1)
clip, enc = load_encoder(ModelConfig())
data = load_tasks(sys.argv[1])
cache = ImageCache(clip.preprocess)
split = SplitConfig(shots=int(os.environ.get("SHOTS", 4)))
sizes = PromptSizes(int(os.environ.get("G", 2)), int(os.environ.get("P", 2)))
for spec in sys.argv[2:]:
    variant, *kv = spec.split(",")
    kw = {}
    for k, x in (p.split("=") for p in kv):
        kind = type(getattr(TrainConfig, k))
        kw[k] = (x.lower() in ("1", "true", "yes")) if kind is bool else kind(x)
    t = time.time()
    rc = RunContext(clip, enc, data, cache, sizes, TrainConfig(**kw), split)
    model = train_variant(rc, variant, GROUPS, f"runs/try/{variant}-{'-'.join(kv) or 'default'}", reuse=False)
    acc = accuracy(predict(model, cache, data, "test"))
    print(variant, kw, {k: round(v, 3) for k, v in acc.items()}, "mean", round(sum(acc.values()) / len(acc), 3),
          f"{time.time() - t:.0f}s", flush=True)
