"""The benches compute what they claim (never how fast: no timing is asserted)."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from bench.encoder import count_flops, naive_encode_image
from bench.encoder import main as encoder_main
from promptclip import PromptedCLIP
from tests.conftest import TINY


def test_naive_variant_computes_the_same_embeddings(tiny_clip):
    enc = PromptedCLIP(tiny_clip.model)
    torch.manual_seed(0)
    images = torch.randn(5, 3, 32, 32)
    prompts = torch.randn(5, enc.vision_layers, 6, enc.vision_width) * 0.5
    with torch.no_grad():
        assert (naive_encode_image(enc, images, prompts) - enc.encode_image(images, prompts)).abs().max() < 1e-5
        shallow = prompts[:, :1]  # depth 1: later blocks keep what the previous block produced
        assert (naive_encode_image(enc, images, shallow) - enc.encode_image(images, shallow)).abs().max() < 1e-5


def test_flop_count_sees_attention_and_the_prompt_tokens(tiny_clip):
    enc = PromptedCLIP(tiny_clip.model)
    x = torch.randn(1, 3, 32, 32)
    bare = count_flops(lambda: tiny_clip.model.encode_image(x))
    prompted = count_flops(lambda: enc.encode_image(x, torch.zeros(1, enc.vision_layers, 8, enc.vision_width)))
    cfg = TINY["vision_cfg"]
    L, W, layers = (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1, cfg["width"], cfg["layers"]
    attention = layers * 2 * 2 * L * L * W  # QK^T and AV, 2 FLOPs per multiply-add
    linear = layers * 2 * L * (4 * W * W + 8 * W * W)  # qkv + out (4 W^2), MLP (8 W^2)
    assert bare >= attention + linear  # plus patch embedding and projection
    assert prompted > bare
    assert torch.is_grad_enabled() and torch.backends.mha.get_fastpath_enabled()  # restored


def test_encoder_bench_prints_a_table_then_consistent_json(tiny_arch, capsys):
    assert encoder_main(["--model", tiny_arch, "--batch-sizes", "1,3", "--reps", "2", "--rep-seconds", "0.001",
                         "--domains", "2", "--tokens", "2,1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any("prompted" in line for line in out[:-1])
    r = json.loads(out[-1])
    assert r["batch"] == 3 and r["tokens"] == {"group": 2, "private": 1, "depth": TINY["vision_cfg"]["layers"]}
    assert 0 < r["flop_ideal"] < 1
    assert r["efficiency"] == pytest.approx(r["prompted_over_bare"] / r["flop_ideal"])
    assert set(r["per_batch"]) == {"1", "3"} and {"bare", "prompted", "naive"} <= set(r["per_batch"]["3"])


@pytest.mark.slow
def test_service_bench_drives_the_real_server(tmp_path, capsys):
    pytest.importorskip("service")
    from bench.service import main as service_main

    cfg = tmp_path / "bench-tiny.json"
    cfg.write_text(json.dumps(TINY))
    assert service_main(["--model", str(cfg), "--domains", "3", "--tokens", "1,1", "--images", "4",
                         "--image-size", "64x48", "--concurrency", "1,2", "--batch-items", "2",
                         "--batch-concurrency", "1", "--duration", "1.5", "--warmup", "0.5",
                         "--max-batch", "4"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # explicit domains at each level, then the highest /classify level and the batch run routed (no domain)
    assert set(r["http"]) == {"/classify c=1", "/classify c=2", "/classify/batch x2 c=1", "/classify c=2 routed",
                              "/classify/batch x2 c=1 routed"}
    assert set(r["routed_over_explicit"]) == {"/classify c=2 routed", "/classify/batch x2 c=1 routed"}
    assert all(v["errors"] == 0 and v["requests"] > 0 for v in r["http"].values())
    assert r["service_over_prompted"] == pytest.approx(r["service_img_s"] / r["prompted_img_s"])
    assert r["p50_ms_c1"] > 0 and r["encoder_includes_decode"] is False


def test_decisions_bench_runs_on_the_shipped_bundles(capsys):
    """Guarded demo domains included: the bench feeds score_batch the bare pass they need; at batch 1 the
    one row's domain (the first, blueprint) has no guard, so there is no bare pass to time."""
    from bench.decisions import main as decisions_main

    assert decisions_main(["--batch", "1", "3", "--reps", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lone, mixed = (r["us_per_image"] for r in out["results"])
    assert set(lone) == set(mixed) == {"encode", "bare", "score", "score_no_scope", "decide", "answers"}
    assert all(v > 0 for v in mixed.values()), mixed
    assert all(v > 0 for k, v in lone.items() if k != "bare"), lone
    assert lone["bare"] < 0.1 * lone["encode"], lone


def test_overhead_bench_splits_the_cpu_by_named_pool():
    """The per-thread table's groups: a named pool's CPU lands under its name."""
    from bench.overhead import thread_cpu_s
    from service.threads import named_pool

    pool = named_pool("model", 1)
    try:
        def burn() -> None:
            t = time.thread_time()
            while time.thread_time() - t < 0.2:
                pass

        before = thread_cpu_s(os.getpid())
        pool.submit(burn).result()
        after = thread_cpu_s(os.getpid())
    finally:
        pool.shutdown()
    assert after["server: model"] - before.get("server: model", 0.0) >= 0.15
    assert "server: event loop" in after  # this process's main thread
