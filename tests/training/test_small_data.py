"""Small data sets through the CLI: a domain flags with stated, wide intervals, says when it cannot,
export refuses to publish a domain that cannot flag at all, and a domain without unsafe labels is
one clear line, not a traceback or a NaN plot."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from promptclip import PromptStore
from training import main

from .conftest import FAST

SMALL = [a for a in FAST if a not in ("photo", "sketch", "pencil", "comic")]


def _fit(world, out, store, *extra):
    domains = ["--domains", "photo", "sketch"]
    i = SMALL.index("--domains")
    args = SMALL[:i] + domains + SMALL[i + 1:]
    return main(["fit", "--data", str(world), "--out", str(out), "--store", str(store), *args, "--no-router",
                 "--seeds", "0", "--variants", "zero_shot", "group_private", "--group-steps", "4",
                 "--group-snapshots", "2", "4", "--group-probe-runs", "1", "--bootstrap", "50", *extra])


@pytest.fixture(scope="module")
def world12(tmp_path_factory, tiny_arch):
    out = tmp_path_factory.mktemp("world12")
    assert main(["synth", "--out", str(out), "--per-class", "12", "--seed", "11"]) == 0
    return out


def test_twelve_images_per_label_flag_with_wide_intervals(world12, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    store = tmp_path / "store"
    assert _fit(world12, tmp_path / "run", store) == 0
    assert "decisions per domain" in caplog.text and "can flag" in caplog.text  # the summary table
    for domain in ("photo", "sketch"):
        m = PromptStore(store).load_current(domain).manifest
        rates = m.metrics["decisions"]
        if m.decision["can_flag"]:
            assert all(lab.threshold < 1 for lab in m.labels if lab.unsafe)
            fr = rates["benign_false_flag"]
            assert fr["lo"] <= fr["rate"] <= fr["hi"] and fr["hi"] - fr["lo"] > 0.1
        else:  # reported, with the reason, where the operator looks
            assert m.decision["cannot_flag_reason"] and f"{domain}" in caplog.text
        assert rates["accuracy_interval"]["n"] == m.metrics["n_test"]
    md = (tmp_path / "run" / "decisions.md").read_text()
    assert "| can flag | false-flag target shown | review target met | zero-shot weight |" in md
    assert "nan" not in md.lower()


def test_a_domain_that_cannot_flag_is_refused_unless_allowed(tmp_path, world12, caplog):
    # every pool image becomes a training shot and there is no validation: no calibration image at all
    no_cal = ["--val-per-class", "0", "--shots", "6"]
    assert _fit(world12, tmp_path / "run", tmp_path / "store", *no_cal) == 2
    assert "cannot flag any image" in caplog.text and "--allow-unflaggable" in caplog.text
    assert PromptStore(tmp_path / "store").domains() == []
    assert main(["export", "--run", str(tmp_path / "run"), "--store", str(tmp_path / "store"),
                 "--allow-unflaggable"]) == 0
    m = PromptStore(tmp_path / "store").load_current("photo").manifest
    assert m.decision["can_flag"] is False and "calibration" in m.decision["cannot_flag_reason"]


def test_a_domain_without_labels_json_is_one_clear_line(tmp_path, world12, caplog):
    data = tmp_path / "data"
    shutil.copytree(world12 / "photo", data / "snapshots")
    (data / "snapshots" / "labels.json").unlink()
    shutil.copytree(world12 / "sketch", data / "sketch")
    caplog.set_level(logging.INFO)
    i = SMALL.index("--domains")
    args = SMALL[:i] + ["--domains", "snapshots", "sketch"] + SMALL[i + 1:]
    assert main(["fit", "--data", str(data), "--out", str(tmp_path / "run"), "--store", str(tmp_path / "store"),
                 *args, "--no-router", "--seeds", "0", "--variants", "zero_shot", "group_private",
                 "--group-steps", "4", "--group-snapshots", "2", "4", "--group-probe-runs", "1",
                 "--bootstrap", "50"]) == 0
    assert "Traceback" not in caplog.text and "TypeError" not in caplog.text
    assert "snapshots: cannot flag: no unsafe label" in caplog.text
    m = PromptStore(tmp_path / "store").load_current("snapshots").manifest
    assert m.decision["can_flag"] is False and not any(lab.unsafe for lab in m.labels)
    assert (tmp_path / "run" / "decisions" / "snapshots.png").stat().st_size > 10_000
    rates = json.loads((tmp_path / "run" / "decisions.json").read_text())["snapshots"]
    assert rates["unsafe_recall"]["rate"] is None
