"""One sample, three ways: the local engine, the Ray Data engine (a local Ray) and the HTTP service.

All three serve the embedded tiny CLIP and the shipped demo bundles; decisions must be identical
and scores / probabilities equal within 1e-5 (batches differ, so float rounding may). Files the
service refuses (TIFF, PDF, text, empty, truncated, garbage) are error rows whose `error_code` is
the code /classify/batch answers for the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from backlog import compare_tables, read_output, score_local
from tests.service.serving import REPO, running_server

from .helpers import config, write_odd, write_synth

pytestmark = pytest.mark.slow

STORE = REPO / "prompts_store"
DOMAIN = "photo"
SAMPLE = 200  # synthetic images, plus the odd formats, two bad files and four the service refuses
ERRORS = 6
HTTP_CHUNK = 50  # images per /classify/batch request (the server's MAX_BATCH_ITEMS is 64)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_synth(root / "synth", SAMPLE, domain=DOMAIN)
    write_odd(root / "odd")
    refused = root / "refused"
    refused.mkdir()
    (refused / "scan.tif").write_bytes(_tiff())
    (refused / "doc.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n")
    (refused / "readme.txt").write_text("a text file in an image folder\n")
    (refused / "empty.jpg").write_bytes(b"")
    return root


def _tiff() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 120, 200)).save(buf, "TIFF")
    return buf.getvalue()


def normalise_errors(table: pa.Table) -> pa.Table:
    """Compare the error codes (`error_code`) and that a row failed, not the message texts."""
    failed = pa.array(["error" if e is not None else None for e in table.column("error").to_pylist()], pa.string())
    return table.set_column(table.column_names.index("error"), "error", failed)


def http_table(url: str, files: list[Path], root: Path) -> pa.Table:
    """POST /classify/batch; the answers as rows shaped like the backlog's (bundle label order irrelevant)."""
    import httpx

    rows = []
    with httpx.Client(base_url=url, timeout=300.0) as http:
        for start in range(0, len(files), HTTP_CHUNK):
            chunk = files[start:start + HTTP_CHUNK]
            r = http.post("/classify/batch", files=[("images", (f.name, f.read_bytes())) for f in chunk],
                          data={"domains": DOMAIN})
            assert r.status_code == 200, r.text
            for f, item in zip(chunk, r.json()["results"], strict=True):
                rows.append(_http_row(f.relative_to(root).as_posix(), item))
    return pa.Table.from_pylist(rows)


def _http_row(id_: str, item: dict) -> dict:
    if item["status"] != 200:
        return {"id": id_, "error": item["error"]["message"], "error_code": item["error"]["code"]}
    res = item["result"]
    row = {"id": id_, "error": None, "error_code": None, "top_label": res["top_label"], "out_of_scope": res["out_of_scope"],
           "scope_score": res["scope_score"], "flagged": res["flagged"], "needs_review": res["needs_review"]}
    for lab in res["labels"]:
        row[f"score.{lab['label']}"] = lab["score"]
        row[f"probability.{lab['label']}"] = lab["probability"]
    return row


@pytest.fixture(scope="module")
def local_out(sample, tmp_path_factory) -> pa.Table:
    out = tmp_path_factory.mktemp("local") / "out.parquet"
    result = score_local(config(sample, out, STORE, shard_size=64, batch_size=16))
    assert result.errors == ERRORS
    return read_output(out)


def test_ray_engine_matches_local(sample, local_out, tmp_path):
    ray = pytest.importorskip("ray", reason='the Ray test needs the ray extra: pip install -e ".[dev]"')
    from backlog.ray_engine import score_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = score_ray(config(sample, tmp_path / "ray.parquet", STORE, engine="ray", shard_size=64,
                                  batch_size=16))
    finally:
        ray.shutdown()
    assert result.scored == local_out.num_rows and result.errors == ERRORS
    report = compare_tables(local_out, read_output(tmp_path / "ray.parquet"), atol=1e-5)
    assert report["rows"] == local_out.num_rows and report["identical"], str(report)


def test_http_service_matches_local(sample, local_out):
    files = sorted(p for p in sample.rglob("*") if p.is_file())
    with running_server({}) as srv:  # no settings: the embedded tiny CLIP and prompts_store/
        served = http_table(srv.url, files, sample)
    report = compare_tables(normalise_errors(local_out), normalise_errors(served), atol=1e-5)
    assert report["rows"] == len(files) == local_out.num_rows and report["identical"], str(report)
    codes = {r["id"]: r["error_code"] for r in local_out.to_pylist() if r["error_code"]}
    assert codes == {"odd/bad-truncated.jpg": "undecodable_image", "odd/bad-garbage.png": "undecodable_image",
                     "refused/scan.tif": "unsupported_format", "refused/doc.pdf": "unsupported_format",
                     "refused/readme.txt": "undecodable_image", "refused/empty.jpg": "empty_image"}
    messages = {r["id"]: r["error"] for r in served.to_pylist() if r["error"]}
    for r in local_out.to_pylist():  # the row reads "code: message", the service's own message
        if r["error"]:
            assert r["error"] == f"{r['error_code']}: {messages[r['id']]}"
    flagged = sum(local_out.column("flagged").to_pylist()[i] is True for i in range(local_out.num_rows))
    assert 0 < flagged < local_out.num_rows  # the sample exercises both outcomes
