"""`python -m bench gpu` runs end to end on a tiny model on the CPU and writes the JSON it promises.

No timing is asserted: only that every phase ran, through real servers, and that the figures
are the ratios they claim to be.
"""

from __future__ import annotations

import json

import pytest

from bench.gpu import GOALS, slug
from tests.conftest import TINY


def test_device_slug_names_the_results_file():
    assert slug("NVIDIA H200") == "nvidia-h200"
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


@pytest.mark.slow
def test_gpu_bench_runs_on_a_tiny_model_and_writes_its_json(tmp_path, capsys):
    pytest.importorskip("service")
    from bench.gpu import main as gpu_main

    cfg = tmp_path / "bench-tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "results.json"
    assert gpu_main(["--model", str(cfg), "--device", "cpu", "--domains", "2", "--tokens", "1,1", "--images", "4",
                     "--image-size", "64x48", "--concurrency", "3", "--client-procs", "2", "--batch-items", "2",
                     "--batch-concurrency", "1", "--duration", "1", "--warmup", "0.3", "--encoder-reps", "2",
                     "--variants", "full,no_nvjpeg", "--workers", "1,2", "--out", str(out), "--budget-s", "600"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    r = json.loads(out.read_text())
    assert r["complete"] and not r["skipped"]
    assert r["device"] == last["device"] == "cpu" and r["model"] == str(cfg)
    # P1: the encoder bench's efficiency, FLOP ratio divided out
    assert r["efficiency"] == pytest.approx(r["encoder"]["prompted_over_bare"] / r["encoder"]["flop_ideal"])
    # P2 and P3 through the real server, the ablation alike
    assert set(r["http"]) == {"full", "no_nvjpeg", "workers2"}  # the front-end count as a dimension
    assert set(r["http"]["full"]) == {"/classify c=3", "/classify c=1", "/classify/batch x2 c=1"}
    assert all(p["errors"] == 0 and p["requests"] > 0 for v in r["http"].values() for p in v.values())
    assert r["service_over_bare"] == pytest.approx(r["service_img_s"] / r["bare_img_s"])
    assert 0 < r["p50_ms"] <= r["p99_ms"]
    ab = r["ablations"]["no_nvjpeg"]
    assert ab["service_over_bare"] == pytest.approx(ab["service_img_s"] / r["bare_img_s"]) and ab["p50_ms"] > 0
    assert r["gains"]["nvjpeg"]["throughput_x"] == pytest.approx(r["service_img_s"] / ab["service_img_s"])
    # the server's own counters saw the traffic; the lone request's parts were timed in process
    assert r["server_batches"]["full"]["/classify c=1"]["mean_batch"] == pytest.approx(1.0)
    assert {"decode", "engine", "replay", "http_and_rest"} <= set(r["p3_breakdown_ms"])
    assert set(r["goals"]) == set(GOALS) and r["goals"]["P1"]["value"] == r["efficiency"]
    assert last["service_over_bare"] == r["service_over_bare"]
    # every process's busy share, per phase: one process, or two front ends and the engine
    assert {b["role"] for b in r["process_busy"]["full"]["/classify c=3"]} == {"server"}
    roles = [b["role"] for b in r["process_busy"]["workers2"]["/classify c=3"]]
    assert sorted(roles) == ["engine", "front end", "front end", "server"], roles
