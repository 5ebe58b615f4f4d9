"""`backlog score --domain auto` against the service: the same router, the same domains, the same decisions."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from backlog import read_output
from tests.service.serving import REPO, running_server

from .helpers import write_synth

pytestmark = pytest.mark.slow
STORE = REPO / "prompts_store"
EXACT = ("domain", "top_label", "out_of_scope", "flagged", "needs_review")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    for i, domain in enumerate(("photo", "sketch", "comic")):
        write_synth(root / domain, 8, domain=domain, seed=300 + i)
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "TIFF")
    (root / "scan.tif").write_bytes(buf.getvalue())
    (root / "empty.jpg").write_bytes(b"")
    return root


def test_routed_backlog_matches_the_routed_service(sample, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "auto.parquet"
    r = subprocess.run([sys.executable, "-m", "backlog", "score", "--input", str(sample), "--domain", "auto",
                        "--out", str(out), "--store", str(STORE), "--no-progress", "--batch-size", "8"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in read_output(out).to_pylist()}
    files = sorted(p for p in sample.rglob("*") if p.is_file())
    assert sorted(rows) == sorted(p.relative_to(sample).as_posix() for p in files)
    assert rows["scan.tif"]["error_code"] == "unsupported_format" and rows["empty.jpg"]["error_code"] == "empty_image"
    with running_server({}) as srv, httpx.Client(base_url=srv.url, timeout=300) as http:
        answers = http.post("/classify/batch", files=[("images", (f.name, f.read_bytes())) for f in files]).json()
    routed = 0
    for f, item in zip(files, answers["results"], strict=True):
        row = rows[f.relative_to(sample).as_posix()]
        if item["status"] != 200:
            assert row["error_code"] == item["error"]["code"]
            continue
        res = item["result"]
        assert {k: row[k] for k in EXACT} == {k: res[k] for k in EXACT}, (f.name, row, res)
        assert abs(row["routed_confidence"] - res["routing"]["confidence"]) < 1e-5
        assert row["routed_low_confidence"] == res["routing"]["low_confidence"]
        for lab in res["labels"]:
            assert abs(row[f"probability.{lab['label']}"] - lab["probability"]) < 1e-5
        routed += 1
    assert routed == len(files) - 2
    assert len({row["domain"] for row in rows.values() if row["domain"]}) >= 2  # several domains in one run
