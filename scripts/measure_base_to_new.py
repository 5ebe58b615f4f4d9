"""Base-to-new transfer of learned prompts (CoOp / CoCoOp / MaPLe protocol) on the synthetic world.

    python scripts/measure_base_to_new.py --work runs/b2n [--new syringe tree] [--eval-seed 6262]

1. writes world seed 0 with only the 6 base labels (symlinks into a full world), trains group +
   private prompts on it with the planted groups (`training train`), and exports bundles
   (`training export`: calibrated decisions for the 6 base labels);
2. adds the 2 new labels to every bundle at runtime (`promptclip.labels`, the admin route's code:
   no retraining, uncalibrated);
3. on a world seed never used (`--eval-seed`) reports, per domain and on average, top-1 accuracy
   of base images among the base labels, of new images among the new labels, and the harmonic
   mean, for zero-shot CLIP (no prompts, the same label prompts) and for the learned prompts;
   plus the 8-way accuracy of the new images among all labels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from PIL import Image

from promptclip import Label, PromptedCLIP, PromptStore, bundle_bank, load_clip
from promptclip.labels import publish_label_edit
from promptclip.loading import ModelSpec
from training import main as training_main
from training.synth import DOMAINS, LABELS, PROMPT


def base_world(full: Path, out: Path, new: list[str]) -> None:
    """`out` = `full` without the new labels' folders (symlinked images, labels.json without them)."""
    shutil.rmtree(out, ignore_errors=True)
    for d in DOMAINS:
        (out / d).mkdir(parents=True)
        for lab in LABELS:
            if lab not in new:
                os.symlink((full / d / lab).resolve(), out / d / lab)
        meta = json.loads((full / d / "labels.json").read_text())
        meta["labels"] = [x for x in meta["labels"] if x["name"] not in new]
        (out / d / "labels.json").write_text(json.dumps(meta))
    shutil.copy(full / "planted_groups.json", out / "planted_groups.json")


@torch.inference_mode()
def accuracy(feats: torch.Tensor, texts: torch.Tensor, truth: list[int]) -> float:
    """Top-1 of normalised image features (N, E) against text features (C, E)."""
    pred = (feats @ texts.T).argmax(1)
    return float((pred == torch.tensor(truth)).float().mean())


def hm(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


def rates(feats: dict[str, torch.Tensor], texts: dict[str, torch.Tensor], base: list[str], new: list[str]) -> dict:
    """Base (6-way among base labels), new (2-way among new labels), their harmonic mean, new among all."""

    def acc(labs: list[str], among: list[str]) -> float:
        f = torch.cat([feats[x] for x in labs])
        truth = [among.index(x) for x in labs for _ in range(len(feats[x]))]
        return accuracy(f, torch.stack([texts[x] for x in among]).float(), truth)

    b, n = acc(base, base), acc(new, new)
    return {"base": b, "new": n, "hm": hm(b, n), "new_among_all": acc(new, base + new)}


@torch.inference_mode()
def evaluate(clip, store: PromptStore, world: Path, base: list[str], new: list[str]) -> dict:
    enc = PromptedCLIP(clip.model)
    zs = clip.model.encode_text(clip.tokenizer([PROMPT.format(x) for x in LABELS]), normalize=True).float()
    zs_texts = dict(zip(LABELS, zs, strict=True))
    out = {}
    for d in DOMAINS:
        bundle = store.load_current(d, clip.info)  # 6 base labels (trained), then the 2 added at runtime
        bank, _ = bundle_bank(bundle, enc, clip.tokenizer, "cpu")
        texts = {lab.name: bank.labels[i] for i, lab in enumerate(bundle.manifest.labels)}
        imgs = {lab: torch.stack([clip.preprocess(Image.open(p).convert("RGB"))
                                  for p in sorted((world / d / lab).glob("*.png"))]) for lab in LABELS}
        vis = bundle.vision_prompts()
        bare = {lab: clip.model.encode_image(x, normalize=True).float() for lab, x in imgs.items()}
        prompted = {lab: enc.encode_image(x, vis.expand(len(x), *vis.shape)).float() for lab, x in imgs.items()}
        out[d] = {"zero_shot": rates(bare, zs_texts, base, new), "prompted": rates(prompted, texts, base, new)}
    mean = {tag: {k: sum(out[d][tag][k] for d in DOMAINS) / len(DOMAINS) for k in out[DOMAINS[0]][tag]}
            for tag in ("zero_shot", "prompted")}
    return {"per_domain": out, "mean": mean}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/b2n"))
    ap.add_argument("--new", nargs=2, default=["syringe", "tree"], help="the 2 labels held out of training")
    ap.add_argument("--eval-seed", type=int, default=6262, help="a world seed never trained on")
    ap.add_argument("--eval-per-class", type=int, default=12)
    a = ap.parse_args()
    w = a.work
    base = [x for x in LABELS if x not in a.new]
    if not (w / "store").is_dir():
        training_main(["synth", "--out", str(w / "full"), "--seed", "0"])
        base_world(w / "full", w / "base", a.new)
        training_main(["train", "--data", str(w / "base"), "--groups", str(w / "base" / "planted_groups.json"),
                       "--out", str(w / "run")])
        training_main(["export", "--run", str(w / "run"), "--store", str(w / "store")])
        store = PromptStore(w / "store")
        for d in DOMAINS:
            for lab in a.new:
                publish_label_edit(store, d, add=Label(lab, PROMPT.format(lab), LABELS[lab]))
    if not (w / f"eval{a.eval_seed}").is_dir():
        training_main(["synth", "--out", str(w / f"eval{a.eval_seed}"), "--seed", str(a.eval_seed),
                       "--per-class", str(a.eval_per_class)])
    torch.set_num_threads(1)
    clip = load_clip(ModelSpec())
    res = evaluate(clip, PromptStore(w / "store"), w / f"eval{a.eval_seed}", base, list(a.new))
    res.update({"base": base, "new": list(a.new), "eval_seed": a.eval_seed})
    (w / "base_to_new.json").write_text(json.dumps(res, indent=1) + "\n")
    print("| variant | base acc (6-way) | new acc (2-way) | H | new among all 8 |\n|---|---|---|---|---|")
    for tag, m in res["mean"].items():
        print(f"| {tag} | {m['base']:.3f} | {m['new']:.3f} | {m['hm']:.3f} | {m['new_among_all']:.3f} |")
    print("\nper domain (prompted base / new / H; zero-shot base / new / H):")
    for d, r in res["per_domain"].items():
        p, z = r["prompted"], r["zero_shot"]
        print(f"  {d:10s} {p['base']:.3f} / {p['new']:.3f} / {p['hm']:.3f};  {z['base']:.3f} / {z['new']:.3f} / "
              f"{z['hm']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
