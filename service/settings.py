"""Service settings: environment variables with the MODERATION_ prefix, or a `.env` file.

Every default lives in this one block. With no settings at all the service serves the
embedded tiny CLIP and the demo bundles in ./prompts_store on port 8000.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODERATION_", env_file=".env", extra="ignore",
                                      protected_namespaces=())

    # --- model
    model: str = Field("tiny-clip", description="open_clip architecture (ViT-B-16) or a path to a JSON config")
    pretrained: str | None = Field("embedded", description="'embedded', an open_clip tag, a local checkpoint")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1'")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto: fp16 on CUDA, else fp32")
    tokenizer: str | None = Field(None, description="local Hugging Face tokenizer directory for towers whose "
                                                    "tokenizer open_clip downloads (SigLIP); needs the [hf] extra")
    store_dir: Path = Field(Path("prompts_store"), description="bundle store root (read only)")
    # --- HTTP
    host: str = "127.0.0.1"  # 0.0.0.0 in the container
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "info"
    admin_token: SecretStr | None = Field(None, description="bearer token for /admin/*; unset disables admin")
    # --- batching
    max_batch: int = Field(32, ge=1, le=4096, description="largest micro-batch sent to the model")
    max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits for images still being decoded")
    max_queue: int = Field(512, ge=1, description="queued images beyond this get 503 + Retry-After")
    request_timeout_s: float = Field(30.0, gt=0, description="per request, queueing included; then 504")
    cuda_graphs: bool = Field(True, description="on CUDA, replay CUDA graphs per batch bucket (promptclip.graphs)")
    device_jpeg: bool = Field(True, description="on CUDA, decode plain JPEGs with nvjpeg and preprocess them on "
                                                "the GPU (promptclip.device_decode); off: PIL for every image")
    body_timeout_s: float = Field(30.0, gt=0, description="upload must arrive within this; then 408")
    retry_after_s: int = Field(1, ge=0, description="Retry-After on 503 queue full")
    # --- input safety
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1, description="larger uploads get 413")
    max_image_pixels: int = Field(40_000_000, ge=1, description="width*height from the header; larger get 413")
    min_image_side: int = Field(8, ge=1, description="smaller images are degenerate: 400")
    max_batch_items: int = Field(64, ge=1, description="images per /classify/batch request")
    decode_workers: int = Field(2, ge=1, description="threads decoding images off the event loop")
    # --- decisions
    review_margin: float = Field(0.1, ge=0, le=1, description="legacy bundles only: needs_review band below "
                                                                 "each unsafe threshold")
    review_out_of_scope: bool = Field(False, description="send out-of-scope images to review (needs_review; "
                                                          "queued with reason out_of_scope)")
    # --- review loop (DESIGN §13, review/)
    review_db: str = Field("sqlite:///review.sqlite3", description="review store: sqlite:///PATH, "
                                                                   "postgresql://..., or 'off'")
    review_audit_rate: float = Field(0.01, ge=0, le=1, description="share of answers not sent to review that "
                                                                   "are queued as audits")
    review_retention_days: float = Field(30.0, ge=0, description="image bytes are purged this long after "
                                                                 "their verdict")
    review_claim_s: float = Field(300.0, gt=0, description="how long a claimed item is held for its reviewer")
    review_undo_s: float = Field(300.0, ge=0, description="a reviewer may withdraw a verdict this long after it")
    review_queue: int = Field(1024, ge=1, description="answers waiting to be written to the review store; "
                                                      "beyond this they are dropped (and counted)")
    reviewer_token: SecretStr | None = Field(None, description="bearer token for /review/* data routes; unset "
                                                               "disables them (403 review_disabled)")
    # --- store and lifecycle
    poll_interval_s: float = Field(0.0, ge=0, description="poll the store for new CURRENT versions; 0 = off")
    drain_delay_s: float = Field(0.0, ge=0, description="after SIGTERM, /readyz is 503 this long before closing")
    drain_timeout_s: float = Field(30.0, gt=0, description="max time to finish in-flight requests on shutdown")
    warmup: bool = True
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = torch default")
    access_log: bool = True
    workers: str = Field("auto", pattern=r"^(auto|[1-9][0-9]*)$",
                         description="front-end processes (HTTP, parsing, responses) before one engine process that "
                                     "owns the model; auto: half the cores, at most 8 (1 on two cores); 1: one "
                                     "process serves everything")

    @field_validator("review_db")
    @classmethod
    def _review_url(cls, v: str) -> str:
        v = v.strip()
        if v.lower() in ("off", "none", ""):
            return "off"
        if not v.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError(f"MODERATION_REVIEW_DB must be sqlite:///PATH, postgresql://... or 'off', not {v!r}")
        return v

    @field_validator("pretrained", mode="before")
    @classmethod
    def _none_string(cls, v):
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "null") else v

    def resolved_workers(self) -> int:
        if self.workers != "auto":
            return int(self.workers)
        return max(1, min(8, (os.cpu_count() or 1) // 2))

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "fp16" if self.resolved_device().startswith("cuda") else "fp32"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (a FastAPI dependency; tests override it or pass their own)."""
    return Settings()
