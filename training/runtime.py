"""Process setup shared by the commands: threads, determinism, torch.distributed, model loading."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist

from promptclip import LoadedCLIP, ModelSpec, PromptedCLIP, load_clip

from .config import ModelConfig, PromptSizes, SplitConfig, TrainConfig
from .data import ImageCache, TaskData

log = logging.getLogger(__name__)


def setup_determinism(threads: int) -> None:
    """Fixed thread count + deterministic kernels: the same seed gives the same bytes on CPU."""
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class RunContext:
    """What every training function needs, loaded once per command (one object, not 9-13 arguments)."""

    clip: LoadedCLIP  # the frozen CLIP (tokenizer, preprocess, info)
    encoder: PromptedCLIP  # its prompted wrapper
    data: TaskData  # tasks with their fixed splits
    cache: ImageCache  # preprocessed images, loaded once
    sizes: PromptSizes  # group / private tokens per layer
    train: TrainConfig  # the training recipe (its seed picks shots, init, batches)
    split: SplitConfig  # the fixed test / validation split and the shots per label
    dist: Dist = field(default_factory=Dist)  # torch.distributed rank / world (world size 1 without torchrun)

    def with_train(self, **changes) -> RunContext:
        """The same context with some TrainConfig fields changed (e.g. seed, steps)."""
        return replace(self, train=replace(self.train, **changes))


def init_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE; then join the group (gloo on CPU, nccl on CUDA). Else world size 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    log.info("distributed: rank %d of %d", d.rank, d.world)
    return d


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def load_encoder(cfg: ModelConfig, d: Dist | None = None,
                 tokenizer: str | None = None) -> tuple[LoadedCLIP, PromptedCLIP]:
    """The frozen CLIP of `cfg` (on this rank's GPU) and its prompted wrapper; `tokenizer` is an
    optional local Hugging Face tokenizer directory."""
    device = cfg.device
    if device == "cuda" and d is not None and d.world > 1:
        device = f"cuda:{d.local_rank}"
    torch.manual_seed(0)  # pretrained=None (tests): the same random CLIP in every process and command
    clip = load_clip(ModelSpec(model=cfg.model, pretrained=cfg.pretrained or None, device=device, tokenizer=tokenizer))
    return clip, PromptedCLIP(clip.model)
