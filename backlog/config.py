"""One typed config for a backlog scoring run; every default is visible here (and in --help).

Light on purpose: `python -m backlog --help` imports this, so torch and promptclip are imported
only when a run starts (`model_spec`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from promptclip import ModelSpec

ENGINES = ("local", "ray")
AUTO = "auto"  # --domain auto: route every image with the store's domain router (backlog/routed.py)
EMBEDDED, EMBEDDED_ARCH = "embedded", "tiny-clip"  # promptclip.EMBEDDED / EMBEDDED_ARCH (a test holds them equal)
MIB = 1024 * 1024


@dataclass(frozen=True)
class ScoreConfig:
    input: Path  # image directory (recursive), Parquet file or folder (image bytes or paths), or a list file
    out: Path  # output Parquet dataset: a folder of shard-NNNNN.parquet files plus _backlog.json
    domain: str  # bundle domain every image is scored against; "auto": each image routed by the store's router
    store: Path = Path("prompts_store")  # bundle store root; the domain's CURRENT version is used
    engine: str = "local"  # local | ray
    model: str = EMBEDDED_ARCH  # open_clip architecture or JSON config path (as MODERATION_MODEL)
    pretrained: str = EMBEDDED  # embedded | open_clip tag | local checkpoint path (as MODERATION_PRETRAINED)
    tokenizer: str | None = None  # local Hugging Face tokenizer directory (SigLIP offline)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on CUDA, else fp32) | fp32 | fp16 | bf16
    batch_size: int = 32  # images per model call
    decode_workers: int = 2  # threads reading + decoding + preprocessing images (per local run / Ray actor)
    shard_size: int = 1000  # images per output shard: the unit of resume
    threads: int = 0  # torch intra-op threads; 0 = auto (see torch_threads)
    max_image_bytes: int = 10 * MIB  # larger files become error rows, image_too_large (as MODERATION_MAX_IMAGE_BYTES)
    max_image_pixels: int = 40_000_000  # width x height from the header; larger: too_many_pixels (MAX_IMAGE_PIXELS)
    min_image_side: int = 8  # a side under this: degenerate_image (as MODERATION_MIN_IMAGE_SIDE)
    review_out_of_scope: bool = False  # out-of-scope images go to review (MODERATION_REVIEW_OUT_OF_SCOPE)
    image_column: str | None = None  # Parquet input: column of image bytes or paths (None: auto-detect)
    id_column: str | None = None  # Parquet input: column of ids (None: "id" if present, else path or file#row)
    ray_address: str | None = None  # Ray cluster to join (None: RAY_ADDRESS, else a local instance)
    ray_concurrency: int = 0  # scoring actors; 0 = one per GPU, else one per ray_cpus_per_actor CPUs
    ray_cpus_per_actor: float = 1.0  # CPUs reserved by each scoring actor
    progress: bool = True  # tqdm progress bar (images/s) on stderr

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        for name in ("batch_size", "decode_workers", "shard_size", "max_image_bytes", "max_image_pixels",
                     "min_image_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.domain:
            raise ValueError("a domain is required (--domain D): every image of a run is scored against it")
        if self.domain == AUTO and self.engine != "local":
            raise ValueError("--domain auto runs on the local engine; pass --engine local, or score each domain "
                             "on Ray with --domain D")

    def torch_threads(self, device: str) -> int:
        """Torch threads to set; 0 leaves torch's default.

        Auto, local engine on CPU: the cores the decode workers leave (at least 1). On a busy
        2-core machine torch's default (2 threads) next to 2 decode threads ran 5-7x slower than
        1 thread (docs/backlog.md). On Ray, auto keeps Ray's setting (OMP_NUM_THREADS = the
        actor's CPUs); on CUDA, torch's default.
        """
        if self.threads or self.engine != "local" or not device.startswith("cpu"):
            return self.threads
        return max(1, (os.cpu_count() or 1) - self.decode_workers)

    def model_spec(self, device: str | None = None) -> ModelSpec:
        """The CLIP to load, resolving auto device / precision on this process's hardware."""
        import torch

        from promptclip import ModelSpec

        dev = device or self.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        prec = self.precision
        if prec == "auto":
            prec = "fp16" if dev.startswith("cuda") else "fp32"
        return ModelSpec(model=self.model, pretrained=self.pretrained, device=dev, precision=prec,
                         tokenizer=self.tokenizer)
