"""Typed run configuration: every default of the pipeline lives in this one file.

Each field's `help` is its comment; the CLI builds its options from these dataclasses, so
`python -m training <command> --help` shows exactly these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def opt(default, help: str, **kw):  # noqa: A002 (argparse's word)
    """A dataclass field whose help text the CLI shows."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


GUARD_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the zero-shot guard's candidate weights (training.guard)
GUARD_ALPHA = 0.05  # a lighter blend must beat the largest weight on calibration at this level (training.guard)


@dataclass
class ModelConfig:
    model: str = opt("tiny-clip", "open_clip architecture, e.g. ViT-B-16, or a path to an open_clip JSON config")
    pretrained: str = opt("embedded", "'embedded' (the shipped tiny CLIP), a checkpoint path, or a tag like openai")
    device: str = opt("cpu", "cpu | cuda | cuda:N (under torchrun: the local rank's GPU when cuda)")
    threads: int = opt(1, "torch CPU threads; fixed so CPU runs repeat bit-for-bit (1: robust on shared cores)")


@dataclass
class SynthConfig:
    seed: int = opt(0, "world seed: every image is a pure function of (seed, domain, label, index)")
    per_class: int = opt(40, "images per (domain, label); splits take test/val from these, shots from the rest")
    size: int = opt(48, "saved image side in pixels (drawn at 128 px and downsampled)")


@dataclass
class SplitConfig:
    split_seed: int = opt(1234, "seed of the fixed test/validation split (independent of the training seed)")
    test_frac: float = opt(0.5, "fraction of each (domain, label) folder held out for testing")
    val_per_class: int = opt(4, "validation images per label (recipe choices, never trained on)")
    val_frac: float = opt(0.0, "fraction of each label folder for validation instead of --val-per-class "
                               "(ImageFolder data with many images; 0: use --val-per-class)")
    shots: int = opt(4, "training images per label per domain: the few-shot regime grouping is for")


@dataclass
class PromptSizes:
    group_tokens: int = opt(4, "group-shared prompt tokens per layer per tower (most of a task's prompt)")
    private_tokens: int = opt(1, "task-private prompt tokens per layer per tower (a small per-domain correction)")
    depth: int = opt(0, "layers receiving fresh prompts (0: every layer)")


@dataclass
class TrainConfig:
    steps: int = opt(150, "optimizer steps (same budget for every trained variant)")
    epochs: int = opt(3, "checkpoints per run: one after each of this many equal slices of the steps")
    batch_per_task: int = opt(8, "samples per task per step (balanced task sampling); divisible by world size")
    lr: float = opt(0.02, "peak AdamW step, relative: each layer's update is scaled by its stream RMS")
    weight_decay: float = opt(0.0, "AdamW weight decay on the prompts")
    warmup: int = opt(10, "linear warm-up steps before the cosine decay")
    init_scale: float = opt(0.1, "prompt init: N(0,1) x this x the frozen stream's RMS at each layer")
    augment: bool = opt(True, "random flip + shift of training images (few shots)")
    reencoded_shots: float = opt(0.0, "share of training draws that show a shot after a client's trip (resized, "
                                      "saved as JPEG: training.augment), so that the prompts learn to ignore it")
    lowpass_domains: list = opt([], "domains trained and served on low-passed images (a Gaussian blur of the model's "
                                    "input before the prompted pass; their bundles record it): for flat-colour "
                                    "domains whose decisions move when an image arrives resized or as a JPEG",
                                nargs="*", type=str)
    lowpass_sigma: float = opt(0.45, "standard deviation of the --lowpass-domains blur, in pixels of the model's input")
    seed: int = opt(0, "training seed: shot sample, prompt init, batch order")
    consistency_image: float = opt(1.0, "PromptSRC consistency: weight of the mean L1 distance between prompted and "
                                        "frozen image features")
    consistency_text: float = opt(2.5, "PromptSRC consistency: weight of the mean L1 distance between prompted and "
                                       "frozen label features")
    consistency_kl: float = opt(0.1, "PromptSRC consistency: weight of KL(zero-shot logits || prompted logits)")
    cache_weights: list = opt([0.0, 0.25, 0.5, 1.0, 2.0],
                              "label cache (Tip-Adapter-style): a label's embedding becomes (text + w x the class mean "
                              "of its shots' prompted image features) / (1 + w); each domain takes the candidate w with "
                              "the best calibration-split accuracy (ties: the smaller); 0 alone: text only",
                              nargs="+", type=float)

    def input_lowpass(self) -> dict[str, float]:
        """domain -> the blur of its prompted pass, in pixels (`promptclip.lowpass`)."""
        return {d: self.lowpass_sigma for d in self.lowpass_domains} if self.lowpass_sigma > 0 else {}


@dataclass
class GroupConfig:
    steps: int = opt(60, "steps of global-prompt training while gradients are snapshot")
    probe_tokens: int = opt(8, "global prompt tokens per layer per tower of the grouping probe")
    probe_init_scale: float = opt(1.0, "probe prompt init: N(0,1) x this x the stream RMS")
    snapshots: list = opt([10, 20, 30, 40, 50, 60], "steps at which per-task gradients are taken (step 0 is left out)", nargs="+",
                          type=int)
    probe_runs: int = opt(3, "probe runs pooled (seeds --seed, --seed + 1, ...: other shots and inits); the matrix "
                             "is the mean over every run's snapshots")
    tower: str = opt("mean", "gradients compared: text | vision | both (concatenated) | mean (each tower's matrix "
                             "normalised on its own, the two averaged)")
    transform: str = opt("none", "none | rank (off-diagonal similarities replaced by their rank, scaled to [-1, 1])")
    center: bool = opt(True, "subtract the mean task gradient before the cosines (the pull all tasks share)")
    method: str = opt("agglomerative", "agglomerative (threshold-free, average linkage) | spectral (normalised "
                                       "Laplacian) | bands (the source's threshold bands) | exhaustive (the source's max "
                                       "total within-group similarity, N <= 10)")
    k_rule: str = opt("silhouette", "number of groups for agglomerative / spectral: silhouette (best on 1 - sim) | "
                                    "eigengap (largest gap in the Laplacian's eigenvalues)")
    bands: list = opt([0.8, 0.6], "band lower bounds for --group-method bands, highest first", nargs="+", type=float)
    bands_center: bool = opt(False, "apply the bands to the centred matrix (default: uncentred, as the source states "
                                    "its 0.8 / 0.6)")
    measure: str = opt("cosine", "cosine | dot (the literal product of the gradients, one scale per snapshot)")
    stability_resamples: int = opt(2, "bootstrap resamples of the shots regrouped at every snapshot, for the "
                                      "stability report (0: snapshots only)")
    stability_draws: int = opt(200, "resamples of the snapshots for the stability report")


@dataclass
class EvalConfig:
    seeds: list = opt([0, 1, 2], "training seeds; the report gives mean ± sd over them", nargs="+", type=int)
    variants: list = opt(["zero_shot", "private_only", "all_shared", "group_private", "global_group_private",
                          "random_groups", "prototype"], "variants to evaluate (random_groups: the groups' sizes, "
                         "random members; prototype: nearest class mean of the shots' frozen image features)",
                         nargs="+")
    random_draws: int = opt(1, "random partitions per training seed for random_groups (draws differ across seeds)")
    bootstrap: int = opt(2000, "bootstrap resamples (seeds x test images) for the paired 95 percent intervals")
    jobs: int = opt(0, "training runs at once, each in its own process with --threads threads (0: one per CPU "
                       "core the threads leave free; 1: one after another); the runs are the same either way")


SCOPE_SIGNALS = ("layers", "final", "neglabel")


@dataclass
class DecisionConfig:
    max_false_flag: float = opt(0.05, "target: largest benign false-flag rate")
    false_flag_confidence: float = opt(0.8, "probability, over the calibration sample, that the fitted threshold "
                                            "keeps benign false flags at or under --max-false-flag")
    review_target: float = opt(0.95, "target: share of unsafe images caught by flag or review")
    review_budget: float = opt(0.5, "at most this share of all images goes to review (caps --review-target)")
    scope_keep: float = opt(0.95, "share of in-domain images kept in scope (the out-of-scope cut)")
    scope_signals: list = opt(["layers", "final"], "out-of-scope signals, fitted on in-domain images only: layers "
                                                   "(a Gaussian over every image-tower block's mean token), final (a "
                                                   "Gaussian over the embedding), neglabel (label mass vs negatives)",
                              nargs="+")
    scope_combine: str = opt("mean", "how the Gaussian signals' standardised scores combine: mean | min")
    scope_rank: int = opt(64, "principal directions a Gaussian signal keeps (the rest: one residual variance, ViM)")
    allow_unflaggable: bool = opt(False, "publish even when a domain with unsafe labels cannot flag at all "
                                         "(export exits non-zero otherwise)")
    negatives: int = opt(256, "negative labels kept per domain, mined from open_clip's ImageNet class names")
    negative_template: str = opt("a photo of a {}.", "prompt text of a negative label")
    ood_seed: int = opt(0, "seed of the OOD probe set the manifest's OOD rates are measured on")
    ood_per_kind: int = opt(40, "OOD probe images per kind (noise, flat, gradient, text, screen, pattern, shapes)")
    guard_weights: list = opt(list(GUARD_WEIGHTS),
                              "zero-shot guard: candidate weights of frozen CLIP's prediction in each domain's label "
                              "distribution, chosen per domain on the calibration split (0 = prompted only, 1 = "
                              "zero-shot; ties go to the larger); none: no guard", nargs="*", type=float)
    guard_alpha: float = opt(GUARD_ALPHA, "zero-shot guard: the most accurate weight is kept only if it beats the "
                                          "largest on the calibration images by a one-sided exact McNemar test at "
                                          "this level (1: whenever it leads)")

    def __post_init__(self) -> None:
        for name in ("max_false_flag", "false_flag_confidence", "review_target", "review_budget", "scope_keep"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(self, name)}")
        unknown = sorted(set(self.scope_signals) - set(SCOPE_SIGNALS))
        if unknown:
            raise ValueError(f"unknown --scope-signals {unknown}; accepted: {', '.join(SCOPE_SIGNALS)}")
        if self.scope_combine not in ("mean", "min"):
            raise ValueError(f"--scope-combine must be mean or min, got {self.scope_combine!r}")
        if self.scope_rank < 1:
            raise ValueError(f"--scope-rank must be >= 1, got {self.scope_rank}")
        if any(not 0 <= w <= 1 for w in self.guard_weights):
            raise ValueError(f"--guard-weights must lie in [0, 1], got {self.guard_weights}")
        if not 0 < self.guard_alpha <= 1:
            raise ValueError(f"--guard-alpha must be in (0, 1], got {self.guard_alpha}")


@dataclass
class ExportConfig:
    version: str = opt("", "bundle version to publish (empty: the store's next vNNNN)")
    seed: int = opt(0, "which trained seed of group_private to export")
    created_at: str = opt("", "manifest created_at (empty: SOURCE_DATE_EPOCH if set, else now)")


@dataclass
class PretrainConfig:
    seed: int = opt(0, "pretraining seed (images, init, batches)")
    images: int = opt(12000, "captioned images rendered for pretraining (photos, plus the fractions below)")
    steps: int = opt(1500, "contrastive steps")
    batch: int = opt(128, "images per step")
    lr: float = opt(2e-3, "peak AdamW learning rate")
    drawings: float = opt(0.15, "fraction of clean line drawings captioned 'a drawing of a {label}.'")
    clipart: float = opt(0.15, "fraction of clean clip art captioned 'a cartoon of a {label}.'")
    reencoded: float = opt(0.0, "fraction of images stored after a client's trip: resized and/or saved as JPEG "
                                "(training.augment), so that the features learn to ignore it")
    eval_per_class: int = opt(24, "images per (domain, label) in the zero-shot check after training")
    out: str = opt("", "output safetensors (empty: promptclip/embedded/tiny-clip.safetensors)")


# The embedded tiny CLIP: small enough to pretrain in minutes on 2 CPU cores and ship in git.
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 48, "layers": 4, "width": 96, "patch_size": 6, "head_width": 48},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 4},
}


def to_dict(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
