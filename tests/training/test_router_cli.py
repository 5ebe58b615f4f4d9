"""`python -m training router`: fits the domain router on bare-CLIP features and publishes it beside the bundles."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from promptclip import PromptStore
from promptclip.bundle import BundleError
from promptclip.loading import BaseModelInfo
from promptclip.router import ROUTER_DIR, fit_router, load_router, make_router, route_metrics
from training import main

from .conftest import DOMAINS

MODEL = ["--model", "test-tiny", "--pretrained", ""]


def test_router_command_publishes_a_validated_router(world, tiny_arch, tiny_clip, tmp_path, capsys):
    store = tmp_path / "store"
    args = ["router", "--data", str(world), "--store", str(store), "--domains", *DOMAINS, *MODEL,
            "--val-per-class", "2", "--min-confidence", "0.4", "--created-at", "2026-01-01T00:00:00+00:00"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == "v0001" and (store / ROUTER_DIR / "CURRENT").read_text().strip() == "v0001"
    router = PromptStore(store).load_router(tiny_clip.info)
    m = router.manifest
    assert m.domains == DOMAINS and m.min_confidence == 0.4 and m.created_at == "2026-01-01T00:00:00+00:00"
    assert m.metrics["n"] == 4 * 8 * len(DOMAINS) and 0 <= m.metrics["accuracy"] <= 1
    assert {"group_accuracy", "confusion", "low_confidence_rate"} <= set(m.metrics)
    assert all(t.dtype == torch.float16 for t in load_file(out["path"]).values())  # small fp16 file
    assert load_router(out["path"], tiny_clip.info).tensors["weight"].dtype == torch.float32  # served in fp32
    assert PromptStore(store).domains() == []  # the router is no domain
    assert main(args) == 0 and PromptStore(store).router_version() == "v0002"  # the next version


def test_a_router_for_another_clip_or_with_bad_shapes_is_refused(tiny_clip, tmp_path):
    feats = torch.nn.functional.normalize(torch.randn(40, tiny_clip.info.embed_dim), dim=-1)
    tensors = fit_router(feats, torch.arange(40) % 2, ["photo", "sketch"])
    store = PromptStore(tmp_path)
    other = make_router(tensors, ["photo", "sketch"], tiny_clip.info, version="v0001")
    other.manifest.base_model = {**other.manifest.base_model, "embed_dim": 999}
    with pytest.raises(BundleError, match="base_model"):
        store.publish_router(other, base=tiny_clip.info)
    with pytest.raises(BundleError, match="shape"):
        store.publish_router(other)
    assert store.router_version() is None


def test_logistic_router_separates_separable_domains():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g)
    x = torch.nn.functional.normalize(centers.repeat_interleave(30, 0) + 0.3 * torch.randn(90, 16, generator=g), dim=-1)
    y = torch.arange(3).repeat_interleave(30)
    t = fit_router(x, y, ["a", "b", "c"])
    base = BaseModelInfo("x", "open_clip-vit", "w", 16, 8, 1, 8, 1, 32)
    routes = make_router(t, ["a", "b", "c"], base, version="v1").to("cpu").route(x, ["a", "b", "c"])
    m = route_metrics([r.domain for r in routes], [["a", "b", "c"][i] for i in y], ["a", "b", "c"], [["a", "b"], ["c"]])
    assert m["accuracy"] > 0.95 and m["group_accuracy"] >= m["accuracy"]
    only = make_router(t, ["a", "b", "c"], base, version="v1").to("cpu").route(x[:5], ["b", "c"])
    assert {r.domain for r in only} <= {"b", "c"}
