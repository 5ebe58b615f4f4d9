"""The synthetic world and task grouping (DESIGN §4, §7)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from training import agglomerative_groups, band_groups, main, same_partition
from training.config import GroupConfig
from training.synth import DOMAINS, GROUPS, LABELS

from .conftest import DOMAINS as USED
from .conftest import FAST


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_layout(world):
    planted = json.loads((world / "planted_groups.json").read_text())
    assert same_partition(planted["groups"], GROUPS)
    assert sorted(d for g in planted["groups"] for d in g) == sorted(DOMAINS)
    assert {"photo", "sketch", "comic"} <= set(DOMAINS) and len(DOMAINS) >= 6 and len(planted["groups"]) >= 3
    for d in DOMAINS:
        labels = json.loads((world / d / "labels.json").read_text())["labels"]
        assert [lab["name"] for lab in labels] == list(LABELS)
        assert sum(lab["unsafe"] for lab in labels) == 4 and all(lab["prompt"] for lab in labels)
        assert sorted(p.name for p in (world / d).iterdir() if p.is_dir()) == sorted(LABELS)
        assert len(list((world / d / "knife").glob("*.png"))) == 8


def test_synth_is_deterministic(world, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    main(["synth", "--out", str(again), "--per-class", "8", "--seed", "3"])
    main(["synth", "--out", str(other), "--per-class", "8", "--seed", "4"])
    assert digest(again) == digest(world)
    assert (other / "sketch" / "pill" / "0000.png").read_bytes() != (world / "sketch" / "pill" / "0000.png").read_bytes()


def test_group_writes_matrix_groups_and_heatmap(grouped):
    sim = json.loads((grouped / "similarity.json").read_text())
    groups = json.loads((grouped / "groups.json").read_text())
    assert sim["tasks"] == USED and sim["snapshots"] == [2, 4] and 0 not in sim["snapshots"]
    m = np.array(sim["matrix"])
    assert m.shape == (4, 4) and np.allclose(np.diag(m), 1.0, atol=1e-3) and np.allclose(m, m.T, atol=1e-3)
    assert (np.abs(m) <= 1 + 1e-6).all()
    assert sorted(t for g in groups["groups"] for t in g) == sorted(USED)
    assert set(sim["per_tower"]) == {"text", "vision", "both", "mean"}
    # the raw evidence every option regroups from (every default probe run x 2 snapshots), and the
    # partition's stability under resampling
    runs = GroupConfig().probe_runs
    assert sim["probe_seeds"] == groups["probe_seeds"] == list(range(runs)) and groups["tower"] == GroupConfig().tower
    n = 2 * runs
    assert np.array(sim["gram"]["text"]).shape == (n, 4, 4) and np.array(sim["gram"]["vision"]).shape == (n, 4, 4)
    assert np.array(sim["gram_shot_resamples"]["text"]).shape == (2, n, 4, 4)  # 2 resamples x every snapshot
    st = groups["stability"]
    assert st == sim["stability"] and st["snapshots"]["n"] == 200 and st["shots"]["n"] == 2
    assert all(0 <= v["identical"] <= 1 and -1 <= v["ari_mean"] <= 1 for v in st.values())
    assert groups["method"] == "agglomerative" and groups["centered"] is True and groups["measure"] == "cosine"
    assert (grouped / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BLOCKS = ["a1", "a2", "b1", "b2", "b3", "c1"]


def planted_matrix():
    block = {"a1": 0, "a2": 0, "b1": 1, "b2": 1, "b3": 1, "c1": 2}
    m = np.array([[0.7 if block[x] == block[y] else -0.3 for y in BLOCKS] for x in BLOCKS])
    m[0, 1] = m[1, 0] = 0.5  # weaker pair: still grouped, no threshold involved
    np.fill_diagonal(m, 1.0)
    return m


def test_agglomerative_recovers_planted_blocks_without_threshold():
    groups, cut = agglomerative_groups(BLOCKS, planted_matrix())
    assert groups == [["a1", "a2"], ["b1", "b2", "b3"], ["c1"]]
    assert cut["k"] == 3
    # scaling the matrix (as another model would) does not change the partition
    assert agglomerative_groups(BLOCKS, planted_matrix() * 0.3 + np.eye(6) * 0.7)[0] == groups


def test_bands_follow_the_source_method():
    m = planted_matrix()
    groups, _ = band_groups(BLOCKS, m, [0.6, 0.4])
    assert groups == [["a1", "a2"], ["b1", "b2", "b3"], ["c1"]]
    # fixed thresholds do not transfer: above every similarity, every task is a singleton
    assert band_groups(BLOCKS, m, [0.8, 0.75])[0] == [[t] for t in BLOCKS]


@pytest.mark.parametrize("cmd", ["synth", "pretrain-tiny", "group", "train", "evaluate", "export", "rollback", "fit"])
def test_help_shows_defaults(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "default" in out or cmd == "rollback"


def test_a_world_too_small_to_split_is_a_clear_error(world, tmp_path, caplog):
    # 8 images per label: 4 test + 4 validation leave nothing to train on
    assert main(["group", "--data", str(world), "--out", str(tmp_path / "run"), *FAST, "--val-per-class", "4"]) == 2
    assert "no image left for training" in caplog.text and "--val-per-class" in caplog.text


@pytest.mark.parametrize(("method", "measure", "centered"), [("exhaustive", "dot", True), ("bands", "cosine", False)])
def test_group_options_through_the_cli(world, tiny_arch, tmp_path, method, measure, centered):
    run = tmp_path / "run"
    assert main(["group", "--data", str(world), "--out", str(run), *FAST, "--group-steps", "4",
                 "--group-snapshots", "2", "4", "--group-method", method, "--group-measure", measure,
                 "--group-stability-resamples", "0", "--group-stability-draws", "5"]) == 0
    groups = json.loads((run / "groups.json").read_text())
    sim = json.loads((run / "similarity.json").read_text())
    assert groups["method"] == method and groups["measure"] == measure and groups["centered"] is centered
    assert sim["centered"] is centered and "shots" not in groups["stability"]
    assert sorted(t for g in groups["groups"] for t in g) == sorted(USED)
    if method == "bands":  # the source's bands read the uncentred matrix
        assert sim["matrix"] == sim["uncentered"]


@pytest.mark.parametrize(("method", "k_rule", "transform"), [("spectral", "eigengap", "rank"),
                                                           ("agglomerative", "silhouette", "none")])
def test_pooled_probe_runs_and_tower_mean_through_the_cli(world, tiny_arch, tmp_path, method, k_rule, transform):
    run = tmp_path / "run"
    assert main(["group", "--data", str(world), "--out", str(run), *FAST, "--group-steps", "4",
                 "--group-snapshots", "2", "4", "--group-probe-runs", "2", "--group-tower", "mean",
                 "--group-method", method, "--group-k-rule", k_rule, "--group-transform", transform,
                 "--group-stability-resamples", "1", "--group-stability-draws", "5"]) == 0
    groups = json.loads((run / "groups.json").read_text())
    sim = json.loads((run / "similarity.json").read_text())
    assert groups["probe_seeds"] == sim["probe_seeds"] == [0, 1]
    assert groups["tower"] == "mean" and groups["k_rule"] == k_rule and groups["transform"] == transform
    # every probe run's snapshots are kept, run after run, with the shot resamples beside them
    assert sim["gram_seeds"] == [0, 0, 1, 1] and sim["gram_steps"] == [2, 4, 2, 4]
    assert len(sim["gram"]["text"]) == len(sim["gram"]["vision"]) == 4 and len(sim["gram_shot_resamples"]["text"][0]) == 4
    assert sorted(t for g in groups["groups"] for t in g) == sorted(USED)
    assert groups["stability"]["shots"]["n"] == 1
    if transform == "rank":
        off = [v for i, row in enumerate(sim["matrix"]) for j, v in enumerate(row) if i != j]
        assert min(off) == -1.0 and max(off) == 1.0
