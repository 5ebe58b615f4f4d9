"""training: offline pipeline for the prompt bundles (DESIGN §4, §7, §8).

synthetic world -> tiny CLIP pretraining -> task grouping by gradient similarity ->
group + private prompt training -> evaluation against baselines -> export to the store.
Run it as ``python -m training <command>``; every step is also a function for tests.

The names below are imported on first use, so ``python -m training --help`` loads no torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "main": "cli",
    **{n: "config" for n in ("TINY_CLIP_CONFIG", "EvalConfig", "ExportConfig", "GroupConfig", "ModelConfig",
                             "PretrainConfig", "PromptSizes", "SplitConfig", "SynthConfig", "TrainConfig")},
    **{n: "data" for n in ("DomainData", "TaskData", "load_tasks")},
    **{n: "grouping" for n in ("agglomerative_groups", "band_groups", "group_tasks", "same_partition")},
    **{n: "train" for n in ("TRAINED_VARIANTS", "train_variant", "variant_layout")},
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
