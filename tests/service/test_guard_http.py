"""A bundle with a zero-shot guard, served over HTTP by a real server: its domain answers with the
blend the manifest records (here weight 1: frozen CLIP's label distribution exactly), alone and in a
mixed batch beside an unguarded domain, through the multi-process layout too."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from promptclip import PromptedCLIP, PromptStore, bundle_from_prompts
from promptclip.banks import zero_shot_labels
from promptclip.images import decode_rgb
from promptclip.runner import ModelRunner

from .serving import LABELS, image_bytes, make_prompts, publish, running_server, tiny_env


def publish_guarded(store: PromptStore, clip, domain: str, weight: float) -> None:
    """A calibrated bundle (Platt a=1, b=0 on the closed-set basis; everything in scope) with a guard."""
    labels = [dataclasses.replace(lab, calibration={"method": "platt", "a": 1.0, "b": 0.0}) for lab in LABELS[domain]]
    bundle = bundle_from_prompts(make_prompts(clip, [domain], seed=5), domain, version="v0001", base=clip.info,
                                 labels=labels, metrics={"accuracy": 0.5})
    bundle.manifest.decision = {"review_threshold": 0.99, "probability_basis": "closed_set", "scope": {"cut": None},
                                "guard": {"weight": weight}}
    store.publish(bundle, base=clip.info)


def zero_shot_softmax(clip, domain: str, images: list[bytes]) -> torch.Tensor:
    runner = ModelRunner(PromptedCLIP(clip.model))
    x = torch.stack([clip.preprocess(decode_rgb(b)) for b in images])
    zs = zero_shot_labels(runner.encoder, clip.tokenizer, [lab.prompt for lab in LABELS[domain]], "cpu")
    return (runner.logit_scale * runner.bare(x) @ zs.T).softmax(1)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_guarded_domain_answers_with_frozen_clip(tiny_model, tmp_path, workers):
    store = PromptStore(tmp_path / "store")
    publish_guarded(store, tiny_model.clip, "photo", 1.0)
    publish(store, tiny_model.clip, "sketch", "v0001")
    images = [image_bytes("png", seed=s) for s in range(4)]
    expect = zero_shot_softmax(tiny_model.clip, "photo", images)
    names = [lab.name for lab in LABELS["photo"]]
    with running_server(tiny_env(tiny_model, store.root, MODERATION_WORKERS=workers)) as srv, srv.client() as http:
        alone = [http.post("/classify", files={"image": ("x.png", b, "image/png")}, data={"domain": "photo"})
                 for b in images]
        files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images + images[:2])]
        mixed = http.post("/classify/batch", files=files,
                          data={"domains": ["photo"] * 4 + ["sketch"] * 2})
    assert all(r.status_code == 200 for r in alone) and mixed.status_code == 200, mixed.text
    batch = [x["result"] for x in mixed.json()["results"]]
    for i, r in enumerate(alone):
        for answer in (r.json(), batch[i]):
            got = {lab["label"]: lab["softmax"] for lab in answer["labels"]}
            torch.testing.assert_close(torch.tensor([got[n] for n in names]), expect[i], rtol=1e-3, atol=1e-5)
            assert answer["top_label"] == names[int(expect[i].argmax())]
            assert answer["labels"][0]["label"] == answer["top_label"]  # listed in the decision's order
    assert [b["domain"] for b in batch[4:]] == ["sketch", "sketch"]
