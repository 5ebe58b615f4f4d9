"""OpenOOD's metrics of the shipped scope score on real images: per domain and kind, AUROC and FPR@95.

    python scripts/measure_real_scope.py --images data/real_ood --half heldout --store prompts_store \
        --world-seed 60217 --out runs/real_scope_heldout.json

In-distribution: a fresh synthetic world (`--world-seed`, never one the bundles saw), rendered in
memory, every label of the domain. Out of distribution: the real images of one half of the
collection `scripts/collect_real_images.py` builds (never fitted on). The scope score is the
bundle's, computed by the same `promptclip` code the service runs (`bundle_bank` + `score_batch`).
AUROC: in-domain scored above the kind (ties count half); FPR@95: the share of the kind at or above
the score that keeps 95% of in-domain images. Flag rates at the shipped cut come from
`scripts/measure_real_ood.py` over HTTP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from promptclip import Banks, ModelSpec, PromptedCLIP, PromptStore, bundle_bank, load_clip, score_batch  # noqa: E402
from promptclip.images import decode_rgb  # noqa: E402
from promptclip.runner import ModelRunner  # noqa: E402
from training import synth  # noqa: E402


def ood_metrics(a: torch.Tensor, b: torch.Tensor) -> dict:
    # training.decisions.ood_metrics, restated here so the script also measures checkouts that predate it
    a, b = a.double().nan_to_num(posinf=1e300), b.double().nan_to_num(posinf=1e300)
    auroc = float(((a[:, None] > b[None]).double() + 0.5 * (a[:, None] == b[None]).double()).mean())
    return {"auroc": round(auroc, 4), "fpr95": round(float((b >= torch.quantile(a, 0.05)).double().mean()), 4),
            "n": len(b)}


@torch.no_grad()
def scope_scores(enc, clip, bank, prompts, pixels: torch.Tensor) -> torch.Tensor:
    banks = Banks.stack([bank])
    rows = torch.zeros(len(pixels), dtype=torch.long)
    out = []
    for i in range(0, len(pixels), 128):
        x, p = pixels[i:i + 128], prompts.expand(len(pixels[i:i + 128]), *prompts.shape)
        # the frozen tower's features for a guarded domain: its label scores need them, its scope does not
        bare = ModelRunner(enc).bare(x) if banks.any_guard else None
        try:  # the image tower's layer taps, where the scope model reads them
            if hasattr(banks, "lowpass_of"):  # as the bundle reads its images (its input low-pass)
                feats, taps = ModelRunner(enc).prompted(x, p, banks.lowpass_of([0] * len(x)))
            else:
                feats, taps = enc.encode_image(x, p, taps=True)
            out.append(score_batch(feats, rows[: len(x)], banks, float(enc.logit_scale), taps, bare).scope)
        except TypeError:  # a checkout from before layer taps: the embedding alone
            out.append(score_batch(enc.encode_image(x, p), rows[: len(x)], banks, float(enc.logit_scale)).scope)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=Path("data/real_ood"), help="folder with manifest.json")
    p.add_argument("--half", default="heldout", choices=["selection", "heldout", "all"])
    p.add_argument("--store", type=Path, default=Path("prompts_store"))
    p.add_argument("--world-seed", type=int, default=60217)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    clip = load_clip(ModelSpec())
    enc = PromptedCLIP(clip.model)
    manifest = [it for it in json.loads((ns.images / "manifest.json").read_text())
                if ns.half == "all" or it["half"] == ns.half]
    kinds = sorted({it["kind"] for it in manifest})
    real = {k: torch.stack([clip.preprocess(decode_rgb((ns.images / it["path"]).read_bytes(), 10 ** 9))
                            for it in manifest if it["kind"] == k]) for k in kinds}
    store, report = PromptStore(ns.store), {}
    for dom in (d for d in store.domains() if not d.startswith("_")):
        bundle = store.load_current(dom, clip.info)
        bank, _ = bundle_bank(bundle, enc, clip.tokenizer, "cpu")
        prompts = bundle.vision_prompts()
        labels = [lab.name for lab in bundle.manifest.labels if lab.name in synth.LABELS]
        world = torch.stack([clip.preprocess(synth.render(dom, lab, synth.image_rng(ns.world_seed, dom, lab, i)))
                             for lab in labels for i in range(ns.per_class)])
        s_in = scope_scores(enc, clip, bank, prompts, world)
        report[dom] = {k: ood_metrics(s_in, scope_scores(enc, clip, bank, prompts, x)) for k, x in real.items()}
        pooled = torch.cat([scope_scores(enc, clip, bank, prompts, x) for x in real.values()])
        report[dom]["all"] = ood_metrics(s_in, pooled)
    print(f"{'domain':<10} " + " ".join(f"{k:>18}" for k in [*kinds, "all"]) + "   (AUROC / FPR@95)")
    for dom, r in report.items():
        print(f"{dom:<10} " + " ".join(f"{r[k]['auroc']:>8.3f} / {r[k]['fpr95']:<7.3f}" for k in [*kinds, "all"]))
    if ns.out:
        ns.out.write_text(json.dumps({"half": ns.half, "world_seed": ns.world_seed, "domains": report}, indent=1))
    print(json.dumps({"half": ns.half, "world_seed": ns.world_seed, "domains": report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
