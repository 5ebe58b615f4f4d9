"""`python -m backlog` as an operator meets it: a folder of mixed files, help texts, what it refuses."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from backlog import compare_tables, read_output
from service.decode import decode_image
from service.errors import ApiError
from tests.service.serving import REPO, image_bytes

from .helpers import write_synth

STORE = REPO / "prompts_store"


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backlog", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def service_code(data: bytes) -> str | None:
    """The error code /classify answers for these bytes with the service's default limits (None: accepted)."""
    try:
        decode_image(data, max_bytes=10 * 1024 * 1024, max_pixels=40_000_000, min_side=8)
    except ApiError as e:
        return e.code
    return None


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """A folder as an operator has one: good images, a TIFF, a PDF, a text file, an empty file, a hidden file."""
    root = tmp_path_factory.mktemp("uploads")
    write_synth(root, 3)
    (root / "photo.jpg").write_bytes(image_bytes("jpeg"))
    (root / "scan.tiff").write_bytes(_tiff())
    (root / "invoice.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n")
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty.png").write_bytes(b"")
    (root / "tiny.png").write_bytes(_png(4, 4))
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return root


def _tiff() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "TIFF")
    return buf.getvalue()


def _png(w: int, h: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG")
    return buf.getvalue()


def test_every_file_gets_a_row_and_refused_ones_carry_the_services_code(mixed_folder, tmp_path):
    out = tmp_path / "out.parquet"
    r = run("score", "--input", str(mixed_folder), "--domain", "photo", "--out", str(out), "--store", str(STORE),
            "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in read_output(out).to_pylist()}
    files = sorted(p.name for p in mixed_folder.iterdir() if not p.name.startswith("."))
    assert sorted(rows) == files  # one row per file; only the hidden file is left out
    expected = {"scan.tiff": "unsupported_format", "invoice.pdf": "unsupported_format",
                "notes.txt": "undecodable_image", "empty.png": "empty_image", "tiny.png": "degenerate_image"}
    for name in files:
        row, code = rows[name], service_code((mixed_folder / name).read_bytes())
        assert row["error_code"] == code == expected.get(name), name  # exactly what /classify answers
        if code is None:
            assert row["error"] is None and row["flagged"] is not None and row["out_of_scope"] is not None
        else:
            assert row["error"].startswith(f"{code}: ") and "Error" not in row["error"], row["error"]
            assert row["flagged"] is None
    assert "unsupported_format: TIFF images are not supported; send JPEG, PNG" in rows["scan.tiff"]["error"]
    assert pq.read_schema(next(out.glob("shard-*.parquet"))).names[5:7] == ["error", "error_code"]


def test_compare_and_its_help(mixed_folder, tmp_path):
    r = run("compare", "--help")
    assert r.returncode == 0
    assert "A  " in r.stdout and "first output" in r.stdout and "B  " in r.stdout and "second output" in r.stdout
    r = run("compare", str(tmp_path / "nothing"), str(tmp_path / "nothing"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_domain_auto_without_a_router_says_so(mixed_folder, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(STORE, store, ignore=shutil.ignore_patterns("_router"))
    r = run("score", "--input", str(mixed_folder), "--domain", "auto", "--out", str(tmp_path / "o"),
            "--store", str(store))
    assert r.returncode == 2
    assert "domain router" in r.stderr and "training router" in r.stderr and "Traceback" not in r.stderr
    r = run("score", "--input", str(mixed_folder), "--domain", "auto", "--out", str(tmp_path / "r"),
            "--engine", "ray")
    assert r.returncode == 2 and "local engine" in r.stderr


HELP_PROBE = ("import runpy, sys; sys.argv = ['backlog', *sys.argv[1:]]\n"
              "try:\n    runpy.run_module('backlog', run_name='__main__', alter_sys=True)\n"
              "except SystemExit as e:\n    code = e.code\n"
              "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)")


@pytest.mark.parametrize("args", [["--help"], ["score", "--help"], ["compare", "--help"]])
def test_help_loads_no_torch_and_names_no_issue(args):
    r = subprocess.run([sys.executable, "-c", HELP_PROBE, *args], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.stderr.strip().endswith("NO-TORCH 0"), r.stderr
    assert "issue" not in r.stdout.lower()
    if args[0] == "score":
        assert "--domain auto" in r.stdout and "error_code" in r.stdout


def test_same_rows_from_the_local_engine_in_process(mixed_folder, tmp_path):
    from backlog import score_local

    from .helpers import config

    out = tmp_path / "inproc.parquet"
    score_local(config(mixed_folder, out, STORE))
    r = run("score", "--input", str(mixed_folder), "--domain", "photo", "--out", str(tmp_path / "cli.parquet"),
            "--store", str(STORE), "--no-progress", "--batch-size", "4", "--shard-size", "5")
    assert r.returncode == 0, r.stderr
    report = compare_tables(read_output(out), read_output(tmp_path / "cli.parquet"), atol=1e-5)
    assert report["identical"], report
