"""promptclip: one frozen open_clip CLIP adapted per task by group-shared + private deep prompts.

Shared core of the moderation product; imported by `training` and `service`, imports neither.
"""

from .banks import bundle_bank
from .bundle import (
    DEFAULT_TEMPLATE,
    TENSOR_NAMES,
    Bundle,
    BundleError,
    Label,
    Manifest,
    bundle_from_prompts,
    load_bundle,
    read_manifest,
    save_bundle,
    tensor_sha256,
)
from .decisions import Banks, BatchScores, DecisionRule, Decisions, DomainBank, decide_batch, score_batch
from .device_decode import (
    DeviceJpegPreprocessor,
    decode_jpeg_batch_gpu,
    device_jpeg_preprocessor,
    preprocess_batch,
)
from .graphs import DEFAULT_BUCKETS, ImageRunner
from .loading import (
    EMBEDDED,
    EMBEDDED_ARCH,
    BaseModelInfo,
    ClipLoadError,
    LoadedCLIP,
    ModelSpec,
    load_clip,
    register_config,
)
from .multitask import MultiTaskCLIP, encode_prompted_texts, label_embeddings, label_tokens
from .prompted import PromptedCLIP, insert_placeholders, measure_stream_rms
from .prompts import PromptConfig, TaskPrompts, check_task_name
from .scope import GaussianSignal, ScopeModel
from .store import PromptStore, version_key
from .towers import SUPPORTED_TEXT, SUPPORTED_VISION


def __getattr__(name: str):
    """The training-only writers load on first use, so serving never imports them."""
    if name in ("save_embedded_model", "canonical_header"):
        from . import embedded_writer

        return getattr(embedded_writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Banks", "BatchScores", "DecisionRule", "Decisions", "DomainBank", "GaussianSignal", "ScopeModel", "bundle_bank",
    "decide_batch",
    "encode_prompted_texts", "label_embeddings", "score_batch",
    "DEFAULT_BUCKETS", "DEFAULT_TEMPLATE", "EMBEDDED", "EMBEDDED_ARCH", "SUPPORTED_TEXT", "SUPPORTED_VISION",
    "TENSOR_NAMES", "BaseModelInfo", "Bundle", "BundleError", "ClipLoadError", "DeviceJpegPreprocessor",
    "ImageRunner", "Label", "LoadedCLIP", "Manifest", "ModelSpec", "MultiTaskCLIP", "PromptConfig", "PromptStore",
    "PromptedCLIP", "TaskPrompts", "bundle_from_prompts", "check_task_name", "decode_jpeg_batch_gpu",
    "device_jpeg_preprocessor", "insert_placeholders", "label_tokens", "load_bundle", "load_clip",
    "measure_stream_rms", "preprocess_batch", "read_manifest", "register_config", "save_bundle",
    "save_embedded_model", "tensor_sha256", "version_key",
]
