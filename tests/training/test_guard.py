"""The zero-shot guard: chosen at export on the calibration split, recorded in the bundle, applied by
the one decision path (the service's runner, the backlog scorer, recalibration) exactly as chosen."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from promptclip import Banks, ModelSpec, PromptedCLIP, PromptStore, bundle_bank, load_clip
from promptclip.banks import zero_shot_labels
from promptclip.runner import ModelRunner
from training import main

from .conftest import DOMAINS


def _clip():
    torch.manual_seed(0)  # the CLI builds random-init CLIPs from seed 0
    return load_clip(ModelSpec(model="test-tiny", pretrained=None))


def _images(world, domain, clip, n=12):
    paths = sorted((world / domain).rglob("*.png"))[:n]
    return torch.stack([clip.preprocess(Image.open(p).convert("RGB")) for p in paths])


@pytest.fixture(scope="module")
def zero_shot_store(trained, tmp_path_factory):
    store = tmp_path_factory.mktemp("guarded") / "store"
    assert main(["export", "--run", str(trained), "--store", str(store), "--guard-weights", "1"]) == 0
    return PromptStore(store)


def test_a_weight_one_guard_serves_frozen_clip_exactly(world, zero_shot_store):
    clip = _clip()
    encoder = PromptedCLIP(clip.model)
    runner = ModelRunner(encoder)
    for d in DOMAINS:
        b = zero_shot_store.load_current(d)
        g = b.manifest.decision["guard"]
        assert g["weight"] == 1.0 and g["candidates"] == [1.0] and g["calibration_images"] == 16
        assert b.calibration_bare().shape == b.calibration()[0].shape == (16, 32)
        bank, _ = bundle_bank(b, encoder, clip.tokenizer, "cpu")
        banks = Banks.stack([bank])
        x = _images(world, d, clip)
        prompts = b.vision_prompts().unsqueeze(0).expand(len(x), -1, -1, -1)
        dec = runner.decide(x, prompts, torch.zeros(len(x), dtype=torch.long), banks)
        zs = zero_shot_labels(encoder, clip.tokenizer, [lab.prompt for lab in b.manifest.labels], "cpu")
        expect = (runner.logit_scale * runner.bare(x) @ zs.T).softmax(1)
        c = len(b.manifest.labels)
        torch.testing.assert_close(dec.scores.softmax[:, :c], expect, rtol=1e-4, atol=1e-5)
        assert dec.top.tolist() == expect.argmax(1).tolist()
        # the prompted path alone would decide otherwise: the guard is what changed the answer
        plain = Banks.stack([type(bank)(bank.labels, bank.negatives, bank.scope, bank.rule)])
        assert not torch.allclose(runner.decide(x, prompts, torch.zeros(len(x), dtype=torch.long), plain)
                                  .scores.softmax[:, :c], expect, atol=1e-3)


def test_default_export_picks_a_weight_on_calibration_and_carries_what_serving_needs(trained, tmp_path):
    store = tmp_path / "store"
    assert main(["export", "--run", str(trained), "--store", str(store)]) == 0
    for d in DOMAINS:
        b = PromptStore(store).load_current(d)
        g = b.manifest.decision["guard"]
        acc = g["calibration_accuracy"]
        assert g["candidates"] == [0.0, 0.25, 0.5, 0.75, 1.0] and set(acc) == {str(w) for w in g["candidates"]}
        best = max(acc.values())
        lead = max((float(k) for k, v in acc.items() if v == best))  # most accurate, ties to the larger
        # kept when its lead over zero-shot's side is significant on calibration, else the largest weight
        assert g["weight"] == (lead if lead == 1.0 or g["p_value"] < g["alpha"] else 1.0)
        assert (b.calibration_bare() is not None) == (g["weight"] > 0)


def test_recalibrating_a_guarded_bundle_keeps_its_guard_and_blended_inputs(world, zero_shot_store):
    import io

    from training.decisions import refit_with_reviews
    from training.recalibrate import decide, features

    clip = _clip()
    b = zero_shot_store.load_current("photo")
    paths = sorted((world / "photo").rglob("*.png"))[:8]
    blobs = []
    for p in paths:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "PNG")
        blobs.append(buf.getvalue())
    enc = features(clip, b, blobs)
    assert enc.bare is not None and enc.bare.shape == enc.feats.shape
    names = [lab.name for lab in b.manifest.labels]
    new = refit_with_reviews(b, clip, enc, [names[i % len(names)] for i in range(8)],
                             [b.manifest.labels[i % len(names)].unsafe for i in range(8)], version="v0099")
    assert new.manifest.decision["guard"] == b.manifest.decision["guard"]
    assert torch.equal(new.calibration_bare(), b.calibration_bare())
    answers = decide(clip, new, enc)
    assert len(answers) == 8 and all(0.0 <= lab["probability"] <= 1.0 for a in answers for lab in a["labels"])
