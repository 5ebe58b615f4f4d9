"""Check PromptedCLIP against open_clip architectures: random init, CPU, fp32.

    python scripts/check_towers.py                      # the architectures of issue 12
    python scripts/check_towers.py ViT-B-16-SigLIP RN50 # some of them

For each architecture it builds the bare open_clip model and either

* refuses it (a ValueError from PromptedCLIP naming the tower: the verdict is "refused"), or
* checks the invariants of DESIGN §3 on both towers:
  - zero prompt tokens reproduce open_clip's encode_image / encode_text (max |diff| <= 1e-5);
  - a mixed-task batch equals the same samples run per task (<= 1e-5);
  - gradients reach the prompts and no frozen CLIP parameter;
  - prompts at every layer change the output (changing only layer k's prompts moves it by
    more than 1e-4 of the output's largest entry: random-init EVA / PE outputs are ~1e-3).

Any other exception is a failure. Token ids come from open_clip's tokenizer where it ships
with open_clip (CLIP BPE) and are random ids otherwise (SigLIP's tokenizer is downloaded).
Prints one line per architecture and a JSON summary; exits 1 if any verdict is "FAIL".
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import open_clip
import torch

from promptclip import PromptedCLIP, insert_placeholders

ARCHS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-B-16-quickgelu", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP2",
         "coca_ViT-B-32", "EVA02-B-16", "PE-Core-B-16", "RN50", "convnext_base", "MobileCLIP-S1", "ViTamin-S")
TOL = 1e-5  # |diff| allowed where outputs must be equal
MOVED = 1e-4  # least relative change a one-layer prompt change must cause (fp32 noise is ~1e-7)
N_TOKENS, TASKS, BATCH = 3, 3, 3


def text_tokens(name: str, n: int) -> torch.Tensor:
    """(BATCH, ctx) ids with `n` placeholder slots after the first position."""
    cfg = open_clip.get_model_config(name)["text_cfg"]
    ctx, vocab = cfg.get("context_length", 77), cfg.get("vocab_size", 49408)
    if "hf_tokenizer_name" in cfg:  # no download here: random ids, then padding (id 1, SigLIP's pad / EOS)
        g = torch.Generator().manual_seed(0)
        tokens = torch.ones(BATCH, ctx, dtype=torch.long)
        tokens[:, :8] = torch.randint(3, vocab, (BATCH, 8), generator=g)
        return insert_placeholders(tokens, n, 5)
    tok = open_clip.get_tokenizer(name)
    return insert_placeholders(tok(["a photo of a knife.", "a sketch of a flower", "x"]), n, int(tok(["X"])[0, 1]))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def check_tower(encode, bare, inputs, layers: int, width: int) -> dict:
    """The four invariants for one tower; `encode(inputs, prompts)` is PromptedCLIP's, unnormalised."""
    g = torch.Generator().manual_seed(1)
    out: dict = {}
    with torch.no_grad():
        empty = torch.zeros(BATCH, layers, 0, width)
        out["zero_tokens_diff"] = max(max_diff(encode(inputs, None), bare), max_diff(encode(inputs, empty), bare))
        bank = torch.randn(TASKS, layers, N_TOKENS, width, generator=g)
        idx = torch.tensor([2, 0, 1][:BATCH])
        mixed = encode(inputs, bank[idx])
        alone = torch.cat([encode(inputs[i:i + 1], bank[idx[i:i + 1]]) for i in range(BATCH)])
        out["mixed_vs_per_task_diff"] = max_diff(mixed, alone)
        base = encode(inputs[:1], bank[:1])
        moved = []
        for k in range(layers):
            p = bank[:1].clone()
            p[:, k] += torch.randn(p[:, k].shape, generator=g)
            moved.append(max_diff(encode(inputs[:1], p), base) / float(base.abs().max()))
        out["least_change_from_one_layer"] = min(moved)  # relative to the output's scale
        out["prompted_vs_bare_diff"] = max_diff(base, bare[:1])
    prompts = bank[idx].clone().requires_grad_(True)
    encode(inputs, prompts).square().sum().backward()
    out["prompt_grad_norm"] = float(prompts.grad.norm())
    return out


def check(name: str) -> dict:
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    try:
        enc = PromptedCLIP(model)
    except ValueError as e:
        return {"arch": name, "verdict": "refused", "message": str(e)}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(2))
    tokens = text_tokens(name, N_TOKENS)
    bare_tokens = text_tokens(name, 0)
    with torch.no_grad():
        bare_img = model.encode_image(images, normalize=False)
        bare_txt = model.encode_text(bare_tokens, normalize=False)
    res = {"arch": name, "family": enc.family,
           "image": check_tower(lambda x, p: enc.encode_image(x, p, normalize=False), bare_img, images,
                                enc.vision_layers, enc.vision_width)}
    # zero tokens on the bare ids; the prompted checks on the ids with placeholder slots
    res["text"] = check_tower(lambda t, p: enc.encode_text(bare_tokens if p is None or p.shape[2] == 0 else t, p,
                                                           normalize=False),
                              bare_txt, tokens, enc.text_layers, enc.text_width)
    res["frozen_params_with_grad"] = sum(p.grad is not None for p in model.parameters())
    ok = res["frozen_params_with_grad"] == 0 and all(
        r["zero_tokens_diff"] <= TOL and r["mixed_vs_per_task_diff"] <= TOL and r["least_change_from_one_layer"] > MOVED
        and r["prompt_grad_norm"] > 0 for r in (res["image"], res["text"]))
    res["verdict"] = "pass" if ok else "FAIL"
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("archs", nargs="*", default=list(ARCHS), help="open_clip architecture names")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name in args.archs:
        t0 = time.perf_counter()
        try:
            r = check(name)
        except Exception as e:  # an AttributeError here is exactly what must not happen
            r = {"arch": name, "verdict": "FAIL", "error": f"{type(e).__name__}: {e}"}
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        if "image" in r:
            worst = max(r[t][k] for t in ("image", "text") for k in ("zero_tokens_diff", "mixed_vs_per_task_diff"))
            print(f"{name:20s} {r['verdict']:8s} largest diff {worst:.2e}  "
                  f"least one-layer change {min(r['image']['least_change_from_one_layer'], r['text']['least_change_from_one_layer']):.2e}",
                  flush=True)
        else:
            print(f"{name:20s} {r['verdict']:8s} {r.get('message') or r.get('error')}", flush=True)
    print(json.dumps(results, indent=1))
    return 1 if any(r["verdict"] == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
