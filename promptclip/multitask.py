"""Frozen CLIP + task prompts + each task's label prompts: logits for mixed-task batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .decisions import label_cosines
from .lowpass import lowpass_rows
from .prompted import PromptedCLIP, insert_placeholders
from .prompts import TaskPrompts


def label_tokens(tokenizer: Callable, texts: Sequence[str], n_tokens: int) -> Tensor:
    """Tokenize label prompt texts with `n_tokens` placeholder slots after SOT: (C, ctx)."""
    tokens = tokenizer(list(texts))
    placeholder = int(tokenizer(["X"])[0, 1])
    return insert_placeholders(tokens, n_tokens, placeholder)


def label_embeddings(text: Tensor, cache: Tensor | None, weight: float) -> Tensor:
    """(C, E) label embeddings: the label prompts' text features, blended with the label cache if any.

    The cache holds each label's class mean of prompted image features of the training shots
    (Tip-Adapter's cache, one mean per class). (text + w * cache) / (1 + w) scores an image by
    (cos(image, text) + w * cos(image, class mean)) / (1 + w): a convex blend of two cosines, so
    the score stays in [-1, 1] and w = 0 is the text alone. A zero row (a label added after
    training, with no shots) keeps that label's text feature alone.
    """
    if cache is None or not weight:
        return text
    cache = cache.to(text.device, text.dtype)
    cache = torch.where((cache == 0).all(-1, keepdim=True), text, cache)
    return (text + weight * cache) / (1 + weight)


def stack_padded(feats: Sequence[Tensor]) -> Tensor:
    """(T, Cmax, E) from T tensors (C_t, E), zero-padded to the largest C_t."""
    out = feats[0].new_zeros(len(feats), max(f.shape[0] for f in feats), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out


def encode_prompted_texts(encoder: PromptedCLIP, tokens: Tensor, text_prompts: Tensor, chunk: int = 256) -> Tensor:
    """(C, E) normalised embeddings of tokenized texts under one task's deep text prompts.

    Args:
        tokens: (C, ctx) from `label_tokens` with as many slots as the prompts have tokens.
        text_prompts: (depth_t, n, Wt); n may be 0 (bare CLIP).
    """
    out = []
    for i in range(0, tokens.shape[0], chunk):  # bounded memory for large vocabularies (negative labels)
        part = tokens[i:i + chunk]
        prompts = text_prompts.unsqueeze(0).expand(part.shape[0], -1, -1, -1) if text_prompts.shape[1] else None
        out.append(encoder.encode_text(part, prompts))
    return torch.cat(out)


class MultiTaskCLIP(nn.Module):
    """Classifies a batch whose samples belong to different tasks in one forward pass.

    Args:
        encoder: the frozen, prompt-aware CLIP.
        prompts: group + private prompts for every task.
        label_texts: task -> the text fed to CLIP for each of its labels (in label order).
        tokenizer: open_clip tokenizer of the encoder's model.
        lowpass: task -> the input low-pass of its prompted pass, in pixels (`promptclip.lowpass`);
            tasks not named get none.
    """

    def __init__(self, encoder: PromptedCLIP, prompts: TaskPrompts, label_texts: dict[str, list[str]],
                 tokenizer: Callable, lowpass: dict[str, float] | None = None):
        super().__init__()
        self.encoder = encoder
        self.prompts = prompts
        self.tasks = prompts.tasks
        self.lowpass = {t: float(s) for t, s in (lowpass or {}).items() if s > 0}
        n = prompts.config.tokens
        self.num_labels = [len(label_texts[t]) for t in self.tasks]
        for t in self.tasks:
            self.register_buffer(f"tokens_{t}", label_tokens(tokenizer, label_texts[t], n), persistent=False)
        self._cache: dict[str, tuple[tuple, Tensor]] = {}
        self.label_cache: dict[str, Tensor] = {}  # task -> (C, E) class means of prompted shot features
        self.cache_weights: dict[str, float] = {}  # task -> blend weight of its cache

    def set_label_cache(self, cache: dict[str, Tensor], weights: dict[str, float]) -> None:
        """Blend each task's label embeddings with its label cache (`label_embeddings`) at inference."""
        self.label_cache, self.cache_weights = dict(cache), {t: float(w) for t, w in weights.items()}
        self._cache.clear()

    def label_tokens(self, task: str) -> Tensor:
        return getattr(self, f"tokens_{task}")

    def text_features(self, task: str) -> Tensor:
        """(C, E) label embeddings for `task`: normalised text features, blended with the task's label
        cache at inference (`label_embeddings`; then no longer unit norm).

        Cached until that task's prompts change; recomputed (with grad, without the label cache)
        while training.
        """
        tokens = self.label_tokens(task)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.prompts.parameters()):
            return encode_prompted_texts(self.encoder, tokens, self.prompts.text(task))
        key = self.prompts.versions(task)
        hit = self._cache.get(task)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                text = encode_prompted_texts(self.encoder, tokens, self.prompts.text(task))
                hit = (key, label_embeddings(text, self.label_cache.get(task), self.cache_weights.get(task, 0.0)))
            self._cache[task] = hit
        return hit[1]

    def all_text_features(self, tasks: Sequence[str] | None = None) -> Tensor:
        """(T, Cmax, E) label embeddings per task, zero-padded to the largest label count."""
        return stack_padded([self.text_features(t) for t in (self.tasks if tasks is None else tasks)])

    def inputs(self, images: Tensor, task_idx: Tensor) -> Tensor:
        """`images` as the prompted pass reads them: each row low-passed as its task asks (`lowpass_rows`)."""
        if not self.lowpass:
            return images
        return lowpass_rows(images, [self.lowpass.get(self.tasks[i], 0.0) for i in task_idx.tolist()])

    def forward(self, images: Tensor, task_idx: Tensor, tasks_needed: Sequence[int] | None = None,
                return_features: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor, list[int], Tensor]:
        """Logits (B, Cmax): scaled cosine similarity to the sample's own task's labels.

        Columns past a task's label count are -inf, so softmax / cross-entropy ignore them.

        Args:
            images: (B, 3, H, W).
            task_idx: (B,) index into `self.tasks` per sample.
            tasks_needed: restrict text encoding to these task indices (default: those present).
            return_features: also return the image features (B, E), the present tasks' label
                features (T', Cmax, E), those tasks' indices and the images the image tower read
                (low-passed where a task asks: `inputs`), for training's consistency loss.
        """
        present = sorted(set(task_idx.tolist())) if tasks_needed is None else list(tasks_needed)
        names = [self.tasks[i] for i in present]
        remap = torch.full((len(self.tasks),), -1, dtype=torch.long, device=task_idx.device)
        remap[torch.tensor(present, device=task_idx.device)] = torch.arange(len(present), device=task_idx.device)
        local = remap[task_idx]  # (B,) index into the present tasks
        # Only present tasks enter the graph, so absent tasks get no gradient (not even zeros).
        bank = torch.stack([self.prompts.vision(t) for t in names])  # (T', depth, n, Wv)
        seen = self.inputs(images, task_idx)
        img = self.encoder.encode_image(seen, bank[local])  # (B, E)
        text = self.all_text_features(names)  # (T', Cmax, E)
        counts = torch.tensor(self.num_labels, device=task_idx.device)[task_idx]  # (B,)
        logits = self.encoder.logit_scale * label_cosines(img, text[local], counts)
        return (logits, img, text, present, seen) if return_features else logits
