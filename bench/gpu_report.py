"""`python -m bench gpu`'s result dict -> its summary figures, goals and printed report.

Kept apart from bench/gpu.py, which runs the phases: these functions only read what the phases
measured (`result["http"]`, the in-process encoder throughputs) and add the derived figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.timing import table

GOALS = {"P1": ("efficiency", ">=", 0.97), "P2": ("service_over_bare", ">=", 0.5), "P3": ("p50_ms", "<=", 3.0)}


def _variant_summary(result: dict, v: str, concurrency: int) -> dict:
    """P2 (`/classify` at `concurrency`) and P3 (`/classify` at 1) figures of one server variant."""
    h = result["http"].get(v, {})
    p2, p3 = f"/classify c={concurrency}", "/classify c=1"
    s = {}
    if p2 in h:
        s.update(service_img_s=h[p2]["img_s"], service_over_bare=h[p2]["img_s"] / result["bare_img_s"],
                 service_over_prompted=h[p2]["img_s"] / result["prompted_runner_img_s"],
                 p50_ms_loaded=h[p2]["p50_ms"], errors=h[p2]["errors"])
    if p3 in h:
        s.update(p50_ms=h[p3]["p50_ms"], p99_ms=h[p3]["p99_ms"], c1_img_s=h[p3]["img_s"])
    return s


def summarise(result: dict, concurrency: int) -> None:
    """Add the full server's figures, the ablations and the CUDA-graph / nvjpeg gains to `result`."""
    full = _variant_summary(result, "full", concurrency)
    result.update(full)
    parts = result.get("p3_breakdown_ms")
    if parts and full.get("p50_ms"):
        parts["http_and_rest"] = round(full["p50_ms"] - parts["decode"] - parts["engine"], 3)
    batch = next((r for k, r in result["http"].get("full", {}).items() if k.startswith("/classify/batch")), None)
    if batch:
        result["batch_endpoint_img_s"] = batch["img_s"]
        result["batch_endpoint_over_bare"] = batch["img_s"] / result["bare_img_s"]
    for v in result["http"]:
        if v != "full":
            result["ablations"][v] = _variant_summary(result, v, concurrency)
    gains = {}
    for v, what in (("no_cuda_graphs", "cuda_graphs"), ("no_nvjpeg", "nvjpeg")):
        a = result["ablations"].get(v, {})
        g = {}
        if a.get("service_img_s") and full.get("service_img_s"):
            g["throughput_x"] = full["service_img_s"] / a["service_img_s"]
        if a.get("p50_ms") and full.get("p50_ms"):
            g["p50_x"] = a["p50_ms"] / full["p50_ms"]  # > 1: the feature makes a lone request faster
        if g:
            gains[what] = g
    result["gains"] = gains


def goals(result: dict) -> dict:
    """Each goal's key, target, measured value and whether it is met (None: not measured)."""
    out = {}
    for g, (key, op, target) in GOALS.items():
        val = result.get(key)
        out[g] = {"key": key, "target": f"{op} {target}", "value": val,
                  "met": None if val is None else (val >= target if op == ">=" else val <= target)}
    return out


def print_report(result: dict, out_path: Path) -> None:
    """The human-readable tables, then the one final JSON line every bench prints."""
    rows = [{"variant": v, "phase": k, "img/s": r["img_s"], "p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"],
             "requests": r["requests"], "errors": r["errors"],
             "mean batch": result["server_batches"][v][k]["mean_batch"],
             "model busy %": 100 * result["server_batches"][v][k]["model_busy"]}
            for v, h in result["http"].items() for k, r in h.items()]
    print(f"\ngpu bench: {result['model']} on {result['device']} ({result['precision']}), random init, "
          f"{result['domains']} domains mixed, {result['jpeg']} JPEGs (~{result['jpeg_mean_bytes'] // 1000} kB), "
          f"MAX_BATCH={result['max_batch']}")
    if rows:
        print(table(rows, ["variant", "phase", "img/s", "p50 ms", "p99 ms", "requests", "errors", "mean batch",
                           "model busy %"]))
    print(f"in process at bs{result['max_batch']} (model only): bare encode_image {result['bare_img_s']:,.0f} img/s, "
          f"prompted runner {result['prompted_runner_img_s']:,.0f} img/s; decode ms/image "
          f"{result.get('decode_ms_per_image')}")
    print(table([{"goal": g, "key": d["key"], "target": d["target"], "value": d["value"] if d["value"] is not None
                  else "-", "met": d["met"]} for g, d in result["goals"].items()],
                ["goal", "key", "target", "value", "met"]))
    if result["skipped"]:
        print(f"skipped: {result['skipped']}")
    print(f"wrote {out_path}")
    print(json.dumps({k: result[k] for k in ("device", "model", "efficiency", "service_over_bare", "p50_ms",
                                             "p99_ms", "ablations", "gains", "complete")}, sort_keys=True))
