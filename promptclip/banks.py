"""A loaded bundle -> what scoring needs: its DomainBank (label and negative-label embeddings, scope model, rule).

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
    bank = DomainBank(labels.float(), feats[c:].float(), None if scope is None else scope.to(device), rule)
    return bank, rule
