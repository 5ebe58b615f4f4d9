"""`python -m training recalibrate --reviews URL --store STORE --domain D`: reviewers' verdicts refit a
domain's decision rule (DESIGN §13).

1. Read the domain's decided review items whose image is still stored (review.ReviewStore).
2. Split them, seeded and stratified by verdict: `--holdout` of them measure, the rest refit.
3. Load the domain's CURRENT bundle and the CLIP it names; compute the decided images' features
   under the bundle's prompts, as the service does.
4. Refit the rule (Platt per label, thresholds, review band, scope cut) on the bundle's calibration
   split plus the fitting verdicts, through training.decisions (the one fitting code).
5. Publish the next version: same prompt tensors, the refitted labels and decision, the manifest's
   `decision.calibration.reviews` = the number of verdicts fitted on. The service picks it up on reload.
6. Print the rates before and after on the held-out verdicts, with 95% intervals.

Too few verdicts for that (fewer than `--min-reviews`, or no unsafe or no benign verdict on either
side of the split): one line, exit status 2, nothing published.

Importing this module imports no torch: `--help` stays fast, and the CLI wires it by calling
`add_arguments(parser)` (training.cli_parser) and `run(args)` (training.commands).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TOO_FEW = 2  # exit status: not enough verdicts (nothing published)
FAILED = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reviews", required=True, help="review database URL (MODERATION_REVIEW_DB): sqlite:///PATH "
                                                   "or postgresql://...")
    p.add_argument("--store", required=True, type=Path, help="bundle store the domain's CURRENT bundle is read "
                                                             "from and the new version published to")
    p.add_argument("--domain", required=True, help="domain to recalibrate")
    p.add_argument("--holdout", type=float, default=0.3, help="share of the verdicts held out to measure the "
                                                              "rates before and after (not fitted on)")
    p.add_argument("--min-reviews", type=int, default=30, help="fewer usable verdicts than this: refuse")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--model", default=None, help="open_clip architecture or JSON config; default: the one the "
                                                 "bundle names")
    p.add_argument("--pretrained", default=None, help="weights: 'embedded', an open_clip tag or a local "
                                                      "checkpoint; default: what the bundle names")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dry-run", action="store_true", help="refit and print the rates, publish nothing")


@dataclass(frozen=True)
class Verdict:
    id: str
    label: str | None  # one of the bundle's labels; None: none of them (benign)
    unsafe: bool
    image: bytes


def split(verdicts: list[Verdict], holdout: float, seed: int) -> tuple[list[Verdict], list[Verdict]]:
    """(fit, held_out): seeded, stratified by the unsafe verdict, each stratum's order shuffled."""
    rng = random.Random(seed)
    fit, held = [], []
    for unsafe in (True, False):
        group = sorted((v for v in verdicts if v.unsafe == unsafe), key=lambda v: v.id)
        rng.shuffle(group)
        k = round(len(group) * holdout)
        held += group[:k]
        fit += group[k:]
    return fit, held


def too_few(fit: list[Verdict], held: list[Verdict], min_reviews: int) -> str | None:
    """Why these verdicts cannot support a refit, or None."""
    n = len(fit) + len(held)
    if n < min_reviews:
        return f"{n} usable verdicts; recalibration needs at least {min_reviews} (--min-reviews)"
    for name, part in (("fitting", fit), ("held-out", held)):
        unsafe = sum(v.unsafe for v in part)
        if unsafe == 0 or unsafe == len(part):
            return (f"the {name} share of the {n} verdicts has {unsafe} unsafe and {len(part) - unsafe} benign; "
                    "it needs both (review more items, or change --holdout)")
    return None


def load_verdicts(url: str, domain: str, labels: list[str]) -> tuple[list[Verdict], int]:
    """The domain's decided items with their image still stored; and how many were skipped (a label the
    bundle no longer has)."""
    from review import ReviewStore

    store = ReviewStore(url)
    try:
        store.ensure_schema()
        rows = store.verdicts(domain)
    finally:
        store.close()
    out, skipped = [], 0
    for r in rows:
        if r["label"] is not None and r["label"] not in labels:
            skipped += 1
            continue
        out.append(Verdict(r["id"], r["label"], r["unsafe"], r["image"]))
    return out, skipped


def model_spec(base: dict, args):
    """The CLIP the bundle names (its architecture and weights), unless --model / --pretrained say otherwise."""
    from promptclip import EMBEDDED, EMBEDDED_ARCH, ModelSpec

    model = args.model or base["architecture"]
    pretrained = args.pretrained
    if pretrained is None:
        weights = str(base.get("weights", ""))
        if weights.startswith("tag:"):
            pretrained = weights[4:]
        elif model == EMBEDDED_ARCH:
            pretrained = EMBEDDED
        else:
            raise SystemExit(f"the bundle's model {model} has weights {weights!r}, which name no tag: pass "
                             "--pretrained PATH (its local checkpoint)")
    return ModelSpec(model=model, pretrained=pretrained, device=args.device)


def features(clip, bundle, images: list[bytes], chunk: int = 64):
    """The images as the decision path reads them under the bundle (training.decisions.Encoded: embeddings
    under its vision prompts, layer taps, and frozen-tower features where it has a zero-shot guard),
    decoded and preprocessed exactly as the service does (promptclip.images.decode_rgb, the model's preprocess)."""
    import torch

    from promptclip import PromptedCLIP
    from promptclip.banks import guard_weight
    from promptclip.images import decode_rgb
    from promptclip.runner import ModelRunner
    from training.decisions import encode_chunks

    runner = ModelRunner(PromptedCLIP(clip.model))
    vp = bundle.vision_prompts().to(runner.device, runner.dtype)  # (depth, n, Wv)
    chunks = (torch.stack([clip.preprocess(decode_rgb(b)) for b in images[i:i + chunk]])
              for i in range(0, len(images), chunk))
    return encode_chunks(runner, vp, chunks, len(images) if guard_weight(bundle.manifest.decision) > 0 else 0,
                         bundle.lowpass)


def rates(answers: list[dict], verdicts: list[Verdict]) -> dict:
    """Decision rates against the reviewers' verdicts, each with its 95% Wilson interval."""
    from review import wilson

    unsafe = [a for a, v in zip(answers, verdicts, strict=True) if v.unsafe]
    benign = [a for a, v in zip(answers, verdicts, strict=True) if not v.unsafe]
    return {
        "false_flag": wilson(sum(a["flagged"] for a in benign), len(benign)),
        "unsafe_recall": wilson(sum(a["flagged"] for a in unsafe), len(unsafe)),
        "unsafe_caught": wilson(sum(a["flagged"] or a["needs_review"] for a in unsafe), len(unsafe)),
        "review_rate": wilson(sum(a["needs_review"] for a in answers), len(answers)),
    }


def _fmt(r: dict) -> str:
    return "n/a" if r["rate"] is None else f"{r['rate']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"


def print_rates(before: dict, after: dict, n: int, out=sys.stdout) -> None:
    print(f"held-out verdicts: {n}", file=out)
    print(f"{'rate':<16}{'before':<26}{'after':<26}", file=out)
    for k in before:
        print(f"{k:<16}{_fmt(before[k]):<26}{_fmt(after[k]):<26}", file=out)


def decide(clip, bundle, enc) -> list[dict]:
    """The service's decisions for these encoded images under `bundle` (promptclip.bundle_bank + decide_batch)."""
    import torch

    from promptclip import PromptedCLIP, bundle_bank
    from training.decisions import decide_features

    bank, _ = bundle_bank(bundle, PromptedCLIP(clip.model), clip.tokenizer, torch.device("cpu"))
    return decide_features(enc.feats, enc.taps, bank, float(clip.model.logit_scale.exp()),
                           enc.bare if bank.guard > 0 else None)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from promptclip import PromptStore, load_clip

    store = PromptStore(args.store)
    try:
        bundle = store.load_current(args.domain)
    except (ValueError, OSError) as e:
        print(f"recalibrate: cannot load {args.domain}'s current bundle from {args.store}: {e}", file=sys.stderr)
        return FAILED
    names = [lab.name for lab in bundle.manifest.labels]
    verdicts, skipped = load_verdicts(args.reviews, args.domain, names)
    if skipped:
        log.warning("%d verdict(s) name a label %s no longer has; not used", skipped, args.domain)
    fit, held = split(verdicts, args.holdout, args.seed)
    why = too_few(fit, held, args.min_reviews)
    if why is not None:
        print(f"recalibrate: {args.domain}: too few verdicts: {why}", file=sys.stderr)
        return TOO_FEW
    if bundle.calibration() is None:
        print(f"recalibrate: {args.domain}@{bundle.version} carries no calibration split (exported before "
              "bundle schema 3): re-export it first", file=sys.stderr)
        return FAILED
    from training.decisions import refit_with_reviews

    clip = load_clip(model_spec(bundle.manifest.base_model, args))
    fit_enc = features(clip, bundle, [v.image for v in fit])
    held_enc = features(clip, bundle, [v.image for v in held])
    new = refit_with_reviews(bundle, clip, fit_enc, [v.label for v in fit], [v.unsafe for v in fit],
                             version=store.next_version(args.domain))
    before = rates(decide(clip, bundle, held_enc), held)
    after = rates(decide(clip, new, held_enc), held)
    print_rates(before, after, len(held))
    if args.dry_run:
        print(f"dry run: {args.domain} {new.version} not published")
        return 0
    path = store.publish(new, base=clip.info)
    print(f"published {args.domain} {new.version} (was {bundle.version}; {len(fit)} verdicts used, "
          f"{len(held)} held out): {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.recalibrate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
