"""The local engine on the embedded tiny CLIP and the shipped demo bundles: inputs, error rows, resume."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from backlog import Scorer, compare_tables, list_inputs, read_output, score_local
from backlog.__main__ import main
from tests.service.serving import REPO

from .helpers import config, write_odd, write_parquet, write_synth

STORE = REPO / "prompts_store"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    files = write_synth(root / "synth", 14) + write_odd(root / "odd")
    return root, files


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, images):
    root, _ = images
    return Scorer(config(root, tmp_path_factory.mktemp("o") / "x", STORE))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images, scorer):
    """One uninterrupted local run over the image folder."""
    root, _ = images
    out = tmp_path_factory.mktemp("ref") / "ref.parquet"
    score_local(config(root, out, STORE), scorer)
    return read_output(out)


def test_folder_run_has_one_row_per_image_and_error_rows(images, reference):
    root, files = images
    assert reference.num_rows == len(files) == len(list_inputs(root))
    rows = {r["id"]: r for r in reference.to_pylist()}
    for name in ("odd/bad-truncated.jpg", "odd/bad-garbage.png"):
        assert rows[name]["error"] and rows[name]["flagged"] is None
    good = [r for r in rows.values() if not r["id"].startswith("odd/bad-")]
    assert all(r["error"] is None and r["bundle_version"] == "v0001" and r["domain"] == "photo" for r in good)
    assert {r["top_label"] for r in good} - {None} <= {"knife", "pistol", "syringe", "pill", "flower", "heart",
                                                        "house", "tree"}
    assert all(0 <= r["probability.knife"] <= 1 and -1 <= r["score.knife"] <= 1 for r in good)


def test_list_file_and_parquet_inputs_score_like_the_folder(tmp_path, images, scorer, reference):
    root, files = images
    listing = tmp_path / "list.txt"
    listing.write_text("# one path per line\n" + "\n".join(f.relative_to(root).as_posix() for f in files) + "\n")
    for f in files:  # the list file's paths are relative to its own folder
        (tmp_path / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f.relative_to(root)).write_bytes(f.read_bytes())
    write_parquet(tmp_path / "bytes.parquet", files, root)
    write_parquet(tmp_path / "paths.parquet", files, root, as_paths=True)
    for source in (listing, tmp_path / "bytes.parquet", tmp_path / "paths.parquet"):
        out = tmp_path / f"{source.stem}-out"
        score_local(config(source, out, STORE), scorer)
        # batches differ: float rounding (the scope score, from every layer's tokens, moves in the 5th digit)
        report = compare_tables(reference, read_output(out), atol=1e-4)
        assert report["rows"] == len(files) and report["identical"], (source.name, report)


def test_backlog_pixels_are_the_services(images, scorer):
    """Same bytes -> same model input as service/decode.py (EXIF, CMYK, palette, 16-bit, alpha)."""
    from service.decode import decode_image

    _, files = images
    for f in files:
        if f.name.startswith("bad-"):
            continue
        data = f.read_bytes()
        expected = scorer.clip.preprocess(decode_image(data, max_bytes=1 << 30, max_pixels=40_000_000))
        assert torch.equal(scorer.pixels(data), expected), f.name


def test_rerun_after_interruption_skips_committed_shards(tmp_path, images, scorer, reference):
    root, files = images
    out = tmp_path / "out.parquet"
    calls = {"n": 0}
    real = scorer.decide

    def dying(pixels):  # the third model call dies, as a killed process would
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(pixels)

    scorer.decide = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            score_local(config(root, out, STORE), scorer)
    finally:
        del scorer.decide
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert 0 < len(first) < -(-len(files) // 5)
    scored = []
    scorer.decide = lambda px: scored.append(len(px)) or real(px)
    try:
        result = score_local(config(root, out, STORE), scorer)
    finally:
        del scorer.decide
    assert result.shards_skipped == len(first)
    assert result.scored == len(files) - 5 * len(first)  # only uncommitted shards were scored
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet") if p.name in first} == first
    # the rerun's model batches start at a shard boundary, not the reference's: float rounding only
    report = compare_tables(reference, read_output(out), atol=1e-4)
    assert report["identical"] and report["decisions_differ"] == 0, str(report)
    again = score_local(config(root, out, STORE), scorer)
    assert again.scored == 0 and again.shards_skipped == again.shards


def test_output_of_another_run_is_refused(tmp_path, images, scorer):
    root, _ = images
    out = tmp_path / "out.parquet"
    score_local(config(root / "synth", out, STORE), scorer)
    with pytest.raises(ValueError, match="domain: 'photo' -> 'sketch'"):
        score_local(config(root / "synth", out, STORE, domain="sketch"))
    with pytest.raises(ValueError, match="shard_size"):
        score_local(config(root / "synth", out, STORE, shard_size=3), scorer)


def test_cli_requires_a_domain_and_documents_defaults(tmp_path, images, capsys, monkeypatch):
    root, _ = images
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps help at the terminal width
    with pytest.raises(SystemExit):
        main(["score", "--input", str(root), "--out", str(tmp_path / "o")])
    assert "--domain" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert "domain router" in text and "(default: local)" in text and "(default: 1000)" in text
    assert main(["score", "--input", str(root), "--out", str(tmp_path / "o"), "--domain", "medical",
                 "--store", str(STORE)]) == 2
    assert "no bundle for domain 'medical'" in capsys.readouterr().err


def test_backlog_never_imports_service():
    code = ("import sys, backlog, backlog.__main__, backlog.ray_engine; "
            "sys.exit(any(m == 'service' or m.startswith('service.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0
