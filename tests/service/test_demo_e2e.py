"""End to end: `python -m service` with no settings serves the embedded model and the demo bundles,
classifies synthetic images from an unseen seed about as well as the manifests report, and makes
the decisions the manifests claim on fresh images and on OOD probes of a seed export never used."""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import subprocess
import sys

import pytest

from promptclip import PromptStore, read_manifest

from .serving import REPO, running_server

pytestmark = pytest.mark.slow

EMBEDDED = REPO / "promptclip" / "embedded" / "tiny-clip.safetensors"
STORE = REPO / "prompts_store"
UNSEEN_SEED = 9173  # the demo bundles are trained on synth seed 0
PER_CLASS = 12
TOLERANCE = 0.05


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def demo_server():
    """`python -m service` with no settings: the embedded tiny CLIP and the demo bundles on :8000."""
    if not EMBEDDED.is_file() or not PromptStore(STORE).domains():
        pytest.skip("embedded tiny CLIP or demo bundles not built yet (python -m training demo)")
    if not _port_free(8000):
        pytest.skip("port 8000 is taken; the no-settings server needs it")
    with running_server({}, test_defaults=False) as srv:
        yield srv


def _measure_module():
    spec = importlib.util.spec_from_file_location("measure_decisions", REPO / "scripts" / "measure_decisions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_decisions_hold_on_fresh_images_and_ood_probes(demo_server):
    """What DESIGN §11 promises: few benign false flags, no OOD flags, the manifests' rates reproduce."""
    mod = _measure_module()
    with demo_server.client() as http:
        report = mod.measure(http, world_seed=UNSEEN_SEED, ood_seed=31, per_class=20, per_kind=10)
    logging.getLogger(__name__).info(mod.markdown(report))
    doms = report["domains"]
    for dom, r in doms.items():
        assert r["out_of_scope_flagged"] == 0, dom  # out of scope is never flagged
        assert r["benign_false_flag"]["rate"] <= 0.10, (dom, r)
        for key, claimed in r["claimed"].items():  # a fresh sample reproduces each manifest claim
            assert abs(r[key]["rate"] - claimed) <= 0.12 or r[key]["lo"] <= claimed <= r[key]["hi"], (dom, key, r[key],
                                                                                                       claimed)
    for kind, v in report["ood_flagged_by_kind"].items():  # 70 probes a kind: fail when shown to be above 10%
        assert v["lo"] <= 0.10 and v["rate"] <= 0.15, (kind, v)
    assert sum(r["unsafe_recall"]["rate"] for r in doms.values()) / len(doms) >= 0.5
    assert sum(r["unsafe_caught"]["rate"] for r in doms.values()) / len(doms) >= 0.8


def test_default_service_serves_demo_bundles_accurately(demo_server, tmp_path):
    data = tmp_path / "data"
    out = subprocess.run([sys.executable, "-m", "training", "synth", "--out", str(data), "--seed", str(UNSEEN_SEED),
                          "--per-class", str(PER_CLASS)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    manifests = {d: read_manifest(PromptStore(STORE).path(d, PromptStore(STORE).current_version(d)))
                 for d in PromptStore(STORE).domains()}

    with demo_server.client() as http:
        assert demo_server.url.endswith(":8000")
        served = {d["domain"]: d for d in http.get("/domains").json()["domains"]}
        assert set(served) == set(manifests)
        right = total = 0
        expected = 0.0
        per_domain = {}
        for domain in sorted(served):
            names = {lab["name"] for lab in served[domain]["labels"]}
            files = [(p, p.parent.name) for p in sorted((data / domain).glob("*/*")) if p.parent.name in names]
            assert files, f"no synthetic images for {domain}"
            ok = 0
            for i in range(0, len(files), 32):
                chunk = files[i:i + 32]
                r = http.post("/classify/batch", files=[("images", (p.name, p.read_bytes())) for p, _ in chunk],
                              data={"domains": domain})
                assert r.status_code == 200, r.text
                for (_, label), res in zip(chunk, r.json()["results"], strict=True):
                    assert res["status"] == 200, res
                    ok += res["result"]["labels"][0]["label"] == label  # highest score; top_label is null out of scope
            acc = ok / len(files)
            reported = float(manifests[domain]["metrics"]["accuracy"])
            per_domain[domain] = {"http": round(acc, 4), "manifest": reported, "n": len(files)}
            right += ok
            total += len(files)
            expected += reported * len(files)
        overall, reported = right / total, expected / total
        (tmp_path / "accuracy.json").write_text(json.dumps(per_domain, indent=2))
        logging.getLogger(__name__).info(json.dumps({"overall_http": overall, "overall_manifest": reported, "per_domain": per_domain}))
        assert overall >= reported - TOLERANCE, per_domain

