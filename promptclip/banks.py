"""A loaded bundle -> what scoring needs: its DomainBank (label and negative-label embeddings, scope model, rule,
and for a bundle with a zero-shot guard the frozen text tower's label features).

The service's registry and the backlog scorer both build domains through here, so a bundle is
encoded the same way everywhere: labels and negatives through the bundle's own text prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .bundle import Bundle, BundleError
from .decisions import DecisionRule, DomainBank
from .multitask import encode_prompted_texts, label_embeddings, label_tokens
from .prompted import PromptedCLIP


def negative_texts(bundle: Bundle) -> list[str]:
    neg = bundle.manifest.negatives
    return [neg.get("template", "{}").format(name) for name in neg.get("names", [])]


@torch.inference_mode()
def bundle_bank(bundle: Bundle, encoder: PromptedCLIP, tokenizer: Callable,
                device: torch.device | str) -> tuple[DomainBank, DecisionRule]:
    """Encode a bundle's label prompts and negative labels once; float32 tensors on `device`."""
    m = bundle.manifest
    text = bundle.text_prompts().to(device, encoder.dtype)  # (depth_t, n, Wt)
    texts = [lab.prompt for lab in m.labels] + negative_texts(bundle)
    tokens = label_tokens(tokenizer, texts, text.shape[1]).to(device)  # (C + M, ctx)
    feats = encode_prompted_texts(encoder, tokens, text).float()  # (C + M, E), normalised
    if not torch.isfinite(feats).all():
        raise BundleError("shape", m.domain, "text features are not finite")
    try:
        scope = bundle.scope_model()
        rule = DecisionRule.from_manifest(m.labels, m.decision)
    except ValueError as e:
        raise BundleError("manifest", m.domain, str(e)) from None
    c = len(m.labels)
    cache, weight = bundle.label_cache()
    labels = label_embeddings(feats[:c], None if cache is None else cache.to(device), weight)
    guard = guard_weight(m.decision)
    zero_shot = zero_shot_labels(encoder, tokenizer, texts[:c], device) if guard > 0 else None
    try:
        bank = DomainBank(labels.float(), feats[c:].float(), None if scope is None else scope.to(device), rule,
                          zero_shot, guard, bundle.lowpass)
    except ValueError as e:
        raise BundleError("manifest", m.domain, str(e)) from None
    return bank, rule


def guard_weight(decision: dict | None) -> float:
    """The zero-shot guard's weight a manifest's decision records (0: none)."""
    return float(((decision or {}).get("guard") or {}).get("weight", 0.0))


@torch.inference_mode()
def zero_shot_labels(encoder: PromptedCLIP, tokenizer: Callable, texts: list[str],
                     device: torch.device | str) -> torch.Tensor:
    """(C, E) float32 normalised label features of the frozen text tower (no prompts): zero-shot CLIP's."""
    tokens = label_tokens(tokenizer, texts, 0).to(device)
    return encoder.encode_text(tokens).float()
