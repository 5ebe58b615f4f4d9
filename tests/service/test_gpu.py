"""GPU twin of the in-process checks: fp16 on CUDA through the CUDA-graph runner. Skipped without CUDA."""

from __future__ import annotations

import base64

import pytest
import torch
from fastapi.testclient import TestClient

from service import Settings, create_app

from .serving import image_bytes

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _app(model, store, device, precision):
    return create_app(Settings(_env_file=None, model=str(model.config), pretrained=str(model.checkpoint),
                               store_dir=store.root, device=device, precision=precision, max_batch=8))


def test_cuda_fp16_matches_cpu_and_uses_graphs(tiny_model, tiny_store):
    items = [{"image": base64.b64encode(image_bytes(k, seed=i)).decode(), "domain": d}
             for i, (k, d) in enumerate([("jpeg", "photo"), ("png", "sketch"), ("webp", "comic"), ("gif", "photo")])]
    results = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp16")):
        with TestClient(_app(tiny_model, tiny_store, device, precision)) as c:
            r = c.post("/classify/batch", json={"items": items})
            assert r.status_code == 200
            results[device] = r.json()["results"]
            if device == "cuda":
                runner = c.app.state.service.engine.encode
                assert getattr(runner, "captured", None), "CUDA graphs captured at warm-up"
                single = c.post("/classify", json=items[0]).json()
                assert single["top_label"] == results["cuda"][0]["result"]["top_label"]
    for a, b in zip(results["cpu"], results["cuda"], strict=True):
        sa = {x["label"]: x["score"] for x in a["result"]["labels"]}
        sb = {x["label"]: x["score"] for x in b["result"]["labels"]}
        assert all(abs(sa[k] - sb[k]) < 2e-2 for k in sa), (sa, sb)
