"""Labels added and removed at runtime (no retraining): admin routes, the store, the CLI, calibration indices."""

from __future__ import annotations

import base64

import pytest
import torch
from fastapi.testclient import TestClient

from promptclip import Label, PromptStore
from promptclip.bundle import load_bundle
from promptclip.labels import LabelEditError, publish_label_edit, without_label
from service import create_app
from training import main as training_main

from .routed import domain_image
from .serving import make_store
from .test_app import settings_for

TOKEN = "labels-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STAR = {"name": "star", "prompt": "a photo of a star.", "unsafe": True, "threshold": 0.05,
        "openai_category": "violence"}


@pytest.fixture()
def store(tiny_model, tmp_path):
    return make_store(tmp_path / "store", tiny_model.clip)


def test_add_then_remove_a_label_at_runtime(tiny_model, store):
    img = base64.b64encode(domain_image(0)).decode()
    with TestClient(create_app(settings_for(tiny_model, store, admin_token=TOKEN))) as c:
        before = c.post("/classify", json={"image": img, "domain": "photo"}).json()
        assert c.post("/admin/domains/photo/labels", json=STAR).status_code == 401
        r = c.post("/admin/domains/photo/labels", json=STAR, headers=AUTH)
        assert r.status_code == 201, r.text
        body = r.json()
        assert (body["version"], body["previous"]) == ("v0002", "v0001")
        assert [(x["domain"], x["version"], x["previous"]) for x in body["reload"]["loaded"]] == [
            ("photo", "v0002", "v0001")]
        star = [x for x in body["labels"] if x["name"] == "star"]
        assert star == [{**STAR, "calibrated": False}]
        listed = {d["domain"]: d for d in c.get("/domains").json()["domains"]}["photo"]
        assert listed["version"] == "v0002" and "star" in [x["name"] for x in listed["labels"]]
        after = c.post("/classify", json={"image": img, "domain": "photo"}).json()
        scored = {x["label"]: x for x in after["labels"]}
        assert after["bundle"]["version"] == "v0002" and scored["star"]["calibrated"] is False
        assert scored["star"]["probability"] == pytest.approx(scored["star"]["softmax"])
        # same prompt tensors: the old labels keep their cosine scores
        for x in before["labels"]:
            assert scored[x["label"]]["score"] == pytest.approx(x["score"], abs=1e-5)
        assert c.post("/admin/domains/photo/labels", json=STAR, headers=AUTH).status_code == 409
        assert c.delete("/admin/domains/photo/labels/star").status_code == 401
        r = c.delete("/admin/domains/photo/labels/star", headers=AUTH)
        assert r.status_code == 200 and r.json()["version"] == "v0003"
        assert "star" not in [x["label"] for x in c.post("/classify", json={"image": img, "domain": "photo"}).json()[
            "labels"]]
        assert c.delete("/admin/domains/photo/labels/star", headers=AUTH).json()["error"]["code"] == "unknown_label"
        assert c.delete("/admin/domains/medical/labels/star", headers=AUTH).status_code == 404
        assert c.post("/admin/domains/photo/labels", json={**STAR, "threshold": 2}, headers=AUTH).status_code == 422
        assert c.post("/admin/domains/photo/labels", json={**STAR, "openai_category": "spam"},
                      headers=AUTH).status_code == 422
        c.delete("/admin/domains/comic/labels/hero", headers=AUTH)
        assert c.delete("/admin/domains/comic/labels/gore", headers=AUTH).json()["error"]["code"] == "too_few_labels"
    assert store.versions("photo") == ["v0001", "v0002", "v0003"]


def test_removing_a_label_remaps_the_calibration_rows_and_keeps_the_scope_model(store):
    bundle = store.load_current("sketch")  # labels: nudity, house, tree, car
    bundle.tensors["calibration.features"] = torch.nn.functional.normalize(torch.randn(8, 32), dim=-1).half().float()
    bundle.tensors["calibration.labels"] = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    bundle.tensors["calibration.scope"] = torch.arange(8, dtype=torch.float32)
    scope = {k: v for k, v in bundle.tensors.items() if k.startswith("scope.")}
    edited = without_label(bundle, "house", "v0009")
    assert [lab.name for lab in edited.manifest.labels] == ["nudity", "tree", "car"]
    assert edited.tensors["calibration.labels"].tolist() == [0, 1, 2, 0, 1, 2]
    assert torch.equal(edited.tensors["calibration.features"].float(),
                       bundle.tensors["calibration.features"][[0, 2, 3, 4, 6, 7]])
    assert edited.tensors["calibration.scope"].tolist() == [0, 2, 3, 4, 6, 7]
    for name, t in scope.items():  # a Gaussian over the domain's images, not per label: bytes kept
        assert torch.equal(edited.tensors[name].float(), t.float()), name
    path = store.publish(edited)
    loaded = load_bundle(path)
    assert loaded.manifest.metrics["label_edits"][-1]["op"] == "remove"
    assert loaded.scope_model() is not None or not scope


def test_label_edits_keep_the_label_cache_row_per_label(store, tiny_model):
    from promptclip import PromptedCLIP, bundle_bank
    from promptclip.labels import with_label

    bundle = store.load_current("sketch")  # labels: nudity, house, tree, car
    bundle.tensors["labels.cache"] = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1).half()
    bundle.manifest.prompt["cache_weight"] = 1.0
    removed = without_label(bundle, "house", "v0009")
    assert torch.equal(removed.tensors["labels.cache"], bundle.tensors["labels.cache"][[0, 2, 3]])
    added = load_bundle(store.publish(with_label(bundle, Label(**STAR), "v0010")))
    assert added.tensors["labels.cache"].shape == (5, 32) and not added.tensors["labels.cache"][4].any()
    # the added label has no shots: its embedding is its text feature alone; the others are blended
    enc, tok = PromptedCLIP(tiny_model.clip.model), tiny_model.clip.tokenizer
    blended, _ = bundle_bank(added, enc, tok, "cpu")
    added.manifest.prompt["cache_weight"] = 0.0
    text, _ = bundle_bank(added, enc, tok, "cpu")
    torch.testing.assert_close(blended.labels[4], text.labels[4])
    torch.testing.assert_close(blended.labels[:4], (text.labels[:4] + added.tensors["labels.cache"][:4]) / 2)


def test_label_edits_refuse_what_they_cannot_do(store):
    with pytest.raises(LabelEditError, match="already has"):
        publish_label_edit(store, "photo", add=Label("weapon", "a photo."))
    with pytest.raises(LabelEditError, match="must match"):
        publish_label_edit(store, "photo", add=Label("../x", "a photo."))
    assert store.versions("photo") == ["v0001"]


def test_training_cli_adds_and_removes_labels(store, capsys):
    args = ["label", "add", "--store", str(store.root), "--domain", "photo", "--name", "star", "--prompt",
            "a photo of a star.", "--unsafe", "--openai-category", "violence"]
    assert training_main(args) == 0
    added = PromptStore(store.root).load_current("photo")
    assert added.version == "v0002" and added.manifest.labels[-1].openai_category == "violence"
    assert added.manifest.labels[-1].calibration is None
    assert training_main(["label", "remove", "--store", str(store.root), "--domain", "photo", "--name", "star"]) == 0
    assert [lab.name for lab in store.load_current("photo").manifest.labels] == ["weapon", "flower", "cat"]
    assert training_main(["label", "remove", "--store", str(store.root), "--domain", "photo", "--name", "x"]) == 2
