"""Bundles and the store (DESIGN §5): round trip, every refusal, atomic publish, rollback."""

from __future__ import annotations

import dataclasses
import json
import logging
import struct

import pytest
import torch

from promptclip import (
    BundleError,
    Label,
    PromptConfig,
    PromptStore,
    TaskPrompts,
    bundle_from_prompts,
    load_bundle,
    save_bundle,
)

LABELS = [Label("knife", "a photo of a knife.", unsafe=True, threshold=0.6), Label("flower", "a photo of a flower.")]


@pytest.fixture()
def prompts(tiny_clip):
    i = tiny_clip.info
    p = TaskPrompts(["photo", "sketch"], [["photo", "sketch"]], PromptConfig(2, 3),
                    i.vision_width, i.vision_layers, i.text_width, i.text_layers)
    p.reset_parameters(std=0.1, generator=torch.Generator().manual_seed(0))
    return p


def make(prompts, tiny_clip, version="v0001", domain="photo"):
    return bundle_from_prompts(prompts, domain, version=version, base=tiny_clip.info, labels=list(LABELS),
                               metrics={"accuracy": 0.75})


def rewrite_manifest(path, **changes):
    """Rewrite a bundle's manifest in place, keeping the tensors (simulates a foreign writer)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    manifest = json.loads(header["__metadata__"]["bundle"])
    manifest.update(changes)
    header["__metadata__"]["bundle"] = json.dumps(manifest)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])


def test_round_trip(tmp_path, prompts, tiny_clip):
    path = save_bundle(make(prompts, tiny_clip), tmp_path / "v0001.safetensors")
    b = load_bundle(path, tiny_clip.info)
    m = b.manifest
    assert (m.domain, m.version, m.group) == ("photo", "v0001", {"id": "g0", "members": ["photo", "sketch"]})
    assert m.prompt == {"depth": 3, "group_tokens": 2, "private_tokens": 3}
    assert m.labels == LABELS and m.metrics["accuracy"] == 0.75 and len(m.sha256) == 64 and m.created_at
    assert b.tensors["vision.group"].shape == (2, 2, 64)  # vision tower has 2 layers
    assert b.tensors["text.private"].shape == (3, 3, 64)
    torch.testing.assert_close(b.vision_prompts(), prompts.vision("photo").detach(), rtol=0, atol=0)
    torch.testing.assert_close(b.text_prompts(), prompts.text("photo").detach(), rtol=0, atol=0)


def test_refuses_wrong_base_model(tmp_path, prompts, tiny_clip):
    path = save_bundle(make(prompts, tiny_clip), tmp_path / "v0001.safetensors")
    other = dataclasses.replace(tiny_clip.info, weights="tag:openai")
    with pytest.raises(BundleError, match="weights: bundle has") as e:
        load_bundle(path, other)
    assert e.value.kind == "base_model"


def test_refuses_shape_mismatch(tmp_path, prompts, tiny_clip):
    path = save_bundle(make(prompts, tiny_clip), tmp_path / "v0001.safetensors")
    rewrite_manifest(path, prompt={"depth": 3, "group_tokens": 4, "private_tokens": 3})
    with pytest.raises(BundleError, match="vision.group is") as e:
        load_bundle(path, tiny_clip.info)
    assert e.value.kind == "shape"


def test_refuses_checksum_mismatch(tmp_path, prompts, tiny_clip):
    path = save_bundle(make(prompts, tiny_clip), tmp_path / "v0001.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip bits inside the tensor bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256") as e:
        load_bundle(path, tiny_clip.info)
    assert e.value.kind == "checksum"


def test_refuses_file_stem_mismatch(tmp_path, prompts, tiny_clip):
    path = save_bundle(make(prompts, tiny_clip), tmp_path / "v0002.safetensors")
    with pytest.raises(BundleError, match="stem") as e:
        load_bundle(path, tiny_clip.info)
    assert e.value.kind == "stem"


@pytest.mark.parametrize("payload", [b"", b"garbage" * 10, b"\xff" * 8 + b"{}"])
def test_refuses_corrupt_file(tmp_path, payload):
    path = tmp_path / "v0001.safetensors"
    path.write_bytes(payload)
    with pytest.raises(BundleError) as e:
        load_bundle(path)
    assert e.value.kind == "corrupt"


def test_refuses_truncated_file(tmp_path, prompts, tiny_clip):
    path = save_bundle(make(prompts, tiny_clip), tmp_path / "v0001.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleError) as e:
        load_bundle(path, tiny_clip.info)
    assert e.value.kind == "corrupt"


def test_unknown_manifest_keys_warn_but_load(tmp_path, prompts, tiny_clip, caplog):
    path = save_bundle(make(prompts, tiny_clip), tmp_path / "v0001.safetensors")
    rewrite_manifest(path, future_field={"x": 1})
    with caplog.at_level(logging.WARNING):
        b = load_bundle(path, tiny_clip.info)
    assert b.version == "v0001"
    assert "future_field" in caplog.text


def test_publish_current_and_rollback(tmp_path, prompts, tiny_clip):
    store = PromptStore(tmp_path)
    store.publish(make(prompts, tiny_clip, "v0001"), tiny_clip.info)
    with torch.no_grad():
        prompts.vision_private["photo"].add_(1.0)
    store.publish(make(prompts, tiny_clip, store.next_version("photo")), tiny_clip.info)
    assert store.versions("photo") == ["v0001", "v0002"]
    assert (tmp_path / "photo" / "CURRENT").read_text().strip() == "v0002"
    assert store.domains() == ["photo"]
    v2 = store.load_current("photo", tiny_clip.info)
    store.rollback("photo", "v0001", tiny_clip.info)
    v1 = store.load_current("photo", tiny_clip.info)
    assert v1.version == "v0001"
    assert not torch.equal(v1.tensors["vision.private"], v2.tensors["vision.private"])
    with pytest.raises(FileNotFoundError, match="available"):
        store.rollback("photo", "v0009")
    with pytest.raises(FileExistsError):
        store.publish(make(prompts, tiny_clip, "v0001"))


def test_highest_version_without_current(tmp_path, prompts, tiny_clip):
    store = PromptStore(tmp_path)
    for v in ("v2", "v10", "v9"):
        store.publish(make(prompts, tiny_clip, v), make_current=False)
    assert store.current_version("photo") == "v10"


def test_partial_write_never_becomes_current(tmp_path, prompts, tiny_clip, monkeypatch):
    store = PromptStore(tmp_path)
    store.publish(make(prompts, tiny_clip, "v0001"))

    import promptclip.store as store_mod

    def crash_midway(bundle, path):
        path.write_bytes(b"\x00" * 50)  # half a file, then the process dies
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "save_bundle", crash_midway)
    with pytest.raises(OSError):
        store.publish(make(prompts, tiny_clip, "v0002"))
    assert store.current_version("photo") == "v0001"
    assert store.versions("photo") == ["v0001"]
    assert sorted(p.name for p in (tmp_path / "photo").iterdir()) == ["CURRENT", "v0001.safetensors"]
    assert store.load_current("photo").version == "v0001"


def test_publish_refuses_bundle_for_another_model(tmp_path, prompts, tiny_clip):
    store = PromptStore(tmp_path)
    other = dataclasses.replace(tiny_clip.info, weights="tag:openai")
    with pytest.raises(BundleError):
        store.publish(make(prompts, tiny_clip, "v0001"), other)
    assert store.versions("photo") == [] and store.current_version("photo") is None
    assert [p.name for p in (tmp_path / "photo").iterdir()] == []


def test_label_cache_round_trips_and_blends_the_label_embeddings(tmp_path, prompts, tiny_clip):
    from promptclip import bundle_bank, label_embeddings

    b = make(prompts, tiny_clip)
    b.tensors["labels.cache"] = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1).half()
    b.manifest.prompt["cache_weight"] = 0.5
    loaded = load_bundle(save_bundle(b, tmp_path / "v0001.safetensors"), tiny_clip.info)
    cache, weight = loaded.label_cache()
    assert weight == 0.5 and torch.equal(cache, b.tensors["labels.cache"].float())
    plain = make(prompts, tiny_clip)  # no cache: the text features alone
    assert plain.label_cache() == (None, 0.0)
    from promptclip import PromptedCLIP
    enc = PromptedCLIP(tiny_clip.model)
    with_cache, _ = bundle_bank(loaded, enc, tiny_clip.tokenizer, "cpu")
    text_only, _ = bundle_bank(plain, enc, tiny_clip.tokenizer, "cpu")
    expect = (text_only.labels + 0.5 * cache) / 1.5
    torch.testing.assert_close(with_cache.labels, expect)
    # the blended score is the convex blend of the two cosines
    x = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    torch.testing.assert_close(x @ label_embeddings(text_only.labels, cache, 0.5).T,
                               (x @ text_only.labels.T + 0.5 * x @ cache.T) / 1.5)
    assert label_embeddings(text_only.labels, cache, 0.0) is text_only.labels


def test_refuses_label_cache_of_the_wrong_shape(tmp_path, prompts, tiny_clip):
    b = make(prompts, tiny_clip)
    b.tensors["labels.cache"] = torch.zeros(3, 32, dtype=torch.float16)  # 3 rows for 2 labels
    path = save_bundle(b, tmp_path / "v0001.safetensors")
    with pytest.raises(BundleError, match="labels.cache"):
        load_bundle(path, tiny_clip.info)
