"""training: offline pipeline for the prompt bundles (DESIGN §4, §7, §8).

synthetic world -> tiny CLIP pretraining -> task grouping by gradient similarity ->
group + private prompt training -> evaluation against baselines -> export to the store.
Run it as ``python -m training <command>``; every step is also a function for tests.
"""

from .cli import main
from .config import (
    TINY_CLIP_CONFIG,
    EvalConfig,
    ExportConfig,
    GroupConfig,
    ModelConfig,
    PretrainConfig,
    PromptSizes,
    SplitConfig,
    SynthConfig,
    TrainConfig,
)
from .data import DomainData, TaskData, load_tasks
from .grouping import agglomerative_groups, band_groups, group_tasks, same_partition
from .train import TRAINED_VARIANTS, train_variant, variant_layout

__all__ = [
    "TINY_CLIP_CONFIG", "TRAINED_VARIANTS", "DomainData", "EvalConfig", "ExportConfig", "GroupConfig",
    "ModelConfig", "PretrainConfig", "PromptSizes", "SplitConfig", "SynthConfig", "TaskData", "TrainConfig",
    "agglomerative_groups", "band_groups", "group_tasks", "load_tasks", "main", "same_partition",
    "train_variant", "variant_layout",
]
