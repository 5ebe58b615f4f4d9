"""The shots curve on a tiny world (one world, two shots levels, resume) and the zero-shot guard's choice."""

from __future__ import annotations

import json

import pytest
import torch

from training import main
from training.guard import GUARD_WEIGHTS, choose_weight

from .conftest import DOMAINS, FAST

SHOTS_AT = FAST.index("--shots")
TINY_CURVE = FAST[:SHOTS_AT] + FAST[SHOTS_AT + 2:] + ["--group-steps", "4", "--group-snapshots", "2", "4",
                                                               "--group-probe-runs", "1", "--train-seeds", "0",
                                                               "--group-stability-resamples", "0", "--bootstrap", "50",
                                                               "--per-class", "8"]


def test_curve_runs_every_cell_and_resumes(tiny_arch, tmp_path):
    out = tmp_path / "curve"
    assert main(["curve", "--out", str(out), "--seeds", "5", "--shots", "1", *TINY_CURVE]) == 0
    summary = json.loads((out / "curve.json").read_text())
    level = summary["levels"]["1"]
    assert {"zero_shot", "private_only", "group_private", "random_groups", "global_group_private", "prototype",
            "all_shared", "guarded"} <= set(level["variants"])
    for row in level["variants"].values():
        acc = row["accuracy"]
        assert acc["n"] == len(DOMAINS) and acc["lo"] <= acc["mean"] <= acc["hi"]
    assert level["variants"]["group_private"]["vs_group_private"]["mean"] == 0.0
    assert (out / "shots_curve.png").stat().st_size > 0
    assert "guarded" in (out / "curve.md").read_text()
    # report only: the finished cells' results, nothing run
    assert main(["curve", "--out", str(out), "--seeds", "5", "--shots", "1,2", "--report-only", *TINY_CURVE]) == 0
    assert not (out / "world-5" / "shots-2").exists()
    assert list(json.loads((out / "curve.json").read_text())["levels"]) == ["1"]
    first = out / "world-5" / "shots-1" / "cell.json"
    stamp = first.stat().st_mtime_ns
    # a rerun with one more level runs only the new cell
    assert main(["curve", "--out", str(out), "--seeds", "5", "--shots", "1,2", *TINY_CURVE]) == 0
    assert first.stat().st_mtime_ns == stamp
    assert list(json.loads((out / "curve.json").read_text())["levels"]) == ["1", "2"]
    # an unfinished cell keeps its finished grouping
    cell = out / "world-5" / "shots-2"
    stamp = (cell / "groups.json").stat().st_mtime_ns
    (cell / "cell.json").unlink()
    assert main(["curve", "--out", str(out), "--seeds", "5", "--shots", "2", *TINY_CURVE]) == 0
    assert (cell / "groups.json").stat().st_mtime_ns == stamp and (cell / "cell.json").is_file()


def _logits(right: bool, labels: torch.Tensor, scale: float = 5.0, n: int = 3) -> torch.Tensor:
    """Logits that put the most mass on the true label (right) or on the next one."""
    target = labels if right else (labels + 1) % n
    return torch.nn.functional.one_hot(target, n).float() * scale


def test_guard_picks_prompted_when_prompted_is_better_on_calibration():
    y = torch.arange(12) % 3
    w, acc, p = choose_weight(_logits(False, y, scale=20.0), _logits(True, y), y)  # every blend follows zero-shot
    assert w == 0.0 and acc[0.0] == 1.0 and acc[0.25] == 0.0 and acc[1.0] == 0.0 and p == 0.5 ** 12


def test_guard_keeps_zero_shot_unless_calibration_shows_the_lead_is_not_noise():
    """A lead of 2 discordant images of 2 (p = 0.25) is noise at alpha 0.05; 5 of 5 (p = 0.031) is not."""
    y = torch.arange(12) % 3
    zs = _logits(True, y, scale=20.0)
    for lead, expect in ((2, 1.0), (5, 0.75)):
        zs_here = zs.clone()
        zs_here[:lead] = _logits(False, y[:lead], scale=20.0)  # zero-shot wrong on the first `lead` images
        prompted = _logits(True, y, scale=1000.0)  # right everywhere, and dominant in every blend below 1:
        # every w < 1 ties at accuracy 1, so the lead is 0.75 (ties to the larger)
        w, acc, p = choose_weight(zs_here, prompted, y)
        assert acc[0.0] == 1.0 and acc[1.0] == pytest.approx(1 - lead / 12) and p == 0.5 ** lead and w == expect
        assert choose_weight(zs_here, prompted, y, alpha=1.0)[0] == 0.75  # alpha 1: any lead


def test_guard_picks_zero_shot_when_zero_shot_is_better_on_calibration():
    y = torch.arange(12) % 3
    w, acc, p = choose_weight(_logits(True, y), _logits(False, y, scale=20.0), y)
    assert w == 1.0 and acc[1.0] == 1.0 and acc[0.0] == 0.0 and p is None


def test_guard_ties_go_to_zero_shot_and_no_calibration_means_zero_shot():
    y = torch.arange(6) % 3
    same = _logits(True, y)
    assert choose_weight(same, same.clone(), y)[0] == max(GUARD_WEIGHTS)
    assert choose_weight(same[:0], same[:0], y[:0]) == (max(GUARD_WEIGHTS), {}, None)
