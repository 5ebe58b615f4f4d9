"""Training, resume, evaluation report, export/rollback and DDP through the CLI's main(argv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from promptclip import ModelSpec, PromptStore, load_bundle, load_clip
from training import main
from training.calibrate import allowed_false_flags, conformal_lower_cut, fit_platt, upper_cut, wilson

from .conftest import DOMAINS, FAST, train

REPO = Path(__file__).resolve().parents[2]


def prompts_of(run, variant="group_private", seed=0):
    return torch.load(Path(run) / "models" / f"{variant}-s{seed}" / "final.pt", weights_only=False)["prompts"]




def test_train_updates_group_and_private_prompts(trained, grouped):
    state = prompts_of(trained)
    groups = json.loads((grouped / "groups.json").read_text())["groups"]
    assert {k.split(".")[0] for k in state} == {"vision_group", "text_group", "vision_private", "text_private"}
    assert len([k for k in state if k.startswith("text_group")]) == len(groups)
    assert all(f"text_private.{d}" in state for d in DOMAINS)
    ckpt = torch.load(trained / "models" / "group_private-s0" / "last.pt", weights_only=False)
    assert ckpt["step"] == 6


def test_resume_gives_the_uninterrupted_result(world, grouped, trained, tmp_path):
    assert train(world, grouped, tmp_path, "--stop-after", "1") == 0
    run = tmp_path / "models" / "group_private-s0"
    assert not (run / "final.pt").exists()
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 2
    assert train(world, grouped, tmp_path, "--resume") == 0
    a, b = prompts_of(trained), prompts_of(tmp_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_same_prompts_other_seed_differs(world, grouped, trained, tmp_path):
    assert train(world, grouped, tmp_path / "again") == 0
    assert train(world, grouped, tmp_path / "other", "--seed", "1") == 0
    a, again, other = prompts_of(trained), prompts_of(tmp_path / "again"), prompts_of(tmp_path / "other", seed=1)
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not torch.equal(a["text_private.photo"], other["text_private.photo"])


def test_evaluate_report_shape(world, grouped, trained, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "groups.json").write_text((grouped / "groups.json").read_text())
    assert main(["evaluate", "--data", str(world), "--run", str(run), *FAST, "--seeds", "0", "1"]) == 0
    rep = json.loads((run / "report.json").read_text())
    names = ["zero_shot", "private_only", "all_shared", "group_private", "global_group_private", "random_groups",
             "prototype"]
    assert list(rep["variants"]) == names
    for name, v in rep["variants"].items():
        assert set(v["per_domain"]) == set(DOMAINS)
        assert all(0.0 <= a <= 1.0 for a in v["per_domain"].values()) and 0.0 <= v["mean"] <= 1.0
        assert abs(v["mean"] - sum(v["per_domain"].values()) / len(DOMAINS)) < 1e-9
        assert set(v["per_seed"]) == {"0", "1"}
        assert (v["trainable_params"] == 0) == (name == "zero_shot")
    p = {k: v["trainable_params"] for k, v in rep["variants"].items()}
    assert p["private_only"] > p["group_private"] >= p["global_group_private"] > p["all_shared"]
    assert p["random_groups"] == p["group_private"] and p["prototype"] == 8 * len(DOMAINS) * 32  # class means
    # random_groups: one random partition per seed, the groups' sizes, never the groups themselves
    groups = rep["groups"]
    for parts in rep["random_partitions"].values():
        assert sorted(map(len, parts[0])) == sorted(map(len, groups)) and parts[0] != groups or len(groups) in (1, 4)
    # paired differences against group_private, with intervals around the point difference
    assert set(rep["paired"]) == set(names) - {"group_private"}
    for v in rep["paired"].values():
        assert -1 <= v["lo"] <= v["hi"] <= 1 and set(v["per_seed"]) == {"0", "1"}
        assert abs(v["diff"] - sum(v["per_seed"].values()) / 2) < 1e-9
    md = (run / "report.md").read_text()
    assert "95% bootstrap interval" in md and "Grouping variance is not in the intervals" in md
    assert rep["variants"]["zero_shot"]["mean_sd"] == 0.0  # no training, same for every seed
    md = (run / "report.md").read_text()
    assert "| group_private |" in md or "| **group_private** |" in md
    assert "±" in md


def test_export_rollback(world, tiny_clip, trained, tmp_path, caplog):
    store = tmp_path / "store"
    assert main(["export", "--run", str(trained), "--store", str(store), "--created-at", "2026-01-01T00:00:00+00:00"]) == 0
    assert main(["export", "--run", str(trained), "--store", str(store)]) == 0
    ps = PromptStore(store)
    assert ps.domains() == sorted(DOMAINS)
    torch.manual_seed(0)  # the CLI builds random-init CLIPs from seed 0
    clip = load_clip(ModelSpec(model="test-tiny", pretrained=None))
    for d in DOMAINS:
        assert ps.versions(d) == ["v0001", "v0002"] and ps.current_version(d) == "v0002"
        b = load_bundle(store / d / "v0001.safetensors", clip.info)
        m = b.manifest
        assert m.domain == d and m.created_at == "2026-01-01T00:00:00+00:00"
        assert 0.0 <= m.metrics["accuracy"] <= 1.0 and m.metrics["n_test"] == 32
        rates = m.metrics["decisions"]
        for key in ("benign_false_flag", "unsafe_recall", "unsafe_caught", "review_rate", "ood_flagged"):
            assert rates[key]["lo"] <= rates[key]["rate"] <= rates[key]["hi"] and rates[key]["n"] > 0
        assert m.decision["targets"]["max_false_flag"] == 0.05 and "review_threshold" in m.decision
        assert all(lab.calibration and lab.calibration["method"] == "platt" for lab in m.labels)
        assert len(m.negatives["names"]) == 256
        scope = b.scope_model()  # fitted at export on the 16 calibration + 16 shot images, cross-fitted
        assert scope is not None and {s.source for s in scope.signals} == {"layer1", "layer2", "final"}
        assert m.decision["scope"]["cut"] is not None and m.decision["scope"]["fitted_on"] == {
            "calibration": 16, "training_shots": 16}
        feats, labels, cross = b.calibration()
        assert feats.shape == (16, 32) and sorted(labels.tolist()) == [i // 2 for i in range(16)] and cross.shape == (16,)
        # 8 benign calibration images cannot show a 5% false-flag rate with confidence: the domain still
        # flags, at the point estimate (above every benign calibration image), and says the bound is not shown
        assert m.decision["targets_met"]["max_false_flag"] is False and m.decision["can_flag"] is True
        assert all(lab.threshold < 1 for lab in m.labels if lab.unsafe)
        assert rates["benign_false_flag"]["hi"] - rates["benign_false_flag"]["lo"] > 0.1  # stated, wide
        assert {lab.name for lab in m.labels if lab.unsafe} == {"knife", "pistol", "syringe", "pill"}
        assert d in m.group["members"]
    assert (trained / "decisions.md").is_file() and sorted(p.name for p in (trained / "decisions").glob("*.png")) == \
        sorted(f"{d}.png" for d in DOMAINS)
    assert main(["rollback", "--store", str(store), "--domain", "sketch", "--version", "v0001"]) == 0
    assert ps.current_version("sketch") == "v0001" and ps.current_version("photo") == "v0002"
    assert main(["rollback", "--store", str(store), "--domain", "sketch", "--version", "v0009"]) == 2
    assert "has no version 'v0009'; available" in caplog.text  # one line, no traceback
    assert ps.current_version("sketch") == "v0001"


def test_false_flag_allowance_is_a_binomial_tolerance_bound():
    assert allowed_false_flags(64, 0.05, 0.8) == 1  # P(Bin(64, .05) <= 1) = 0.16 <= 0.2 < P(<= 2) = 0.37
    assert allowed_false_flags(8, 0.05, 0.8) == -1  # too few benign images for the bound (the rule falls back)
    assert 40 <= allowed_false_flags(1000, 0.05, 0.8) < 50  # approaches target * n
    scores = torch.tensor([0.9, 0.8, 0.7, 0.2])
    assert abs(upper_cut(scores, 1) - 0.85) < 1e-6 and (scores >= upper_cut(scores, 2)).sum() == 2


def test_scope_cut_keeps_the_target_share_of_fresh_in_distribution_scores():
    g = torch.Generator().manual_seed(0)
    cal, fresh = torch.randn(400, generator=g), torch.randn(20000, generator=g)
    kept = float((fresh >= conformal_lower_cut(cal, 0.05)).float().mean())
    assert 0.93 <= kept <= 0.97


def test_platt_calibration_is_calibrated_on_fresh_samples():
    g = torch.Generator().manual_seed(1)

    def sample(n):
        y = torch.rand(n, generator=g) < 0.2
        return torch.randn(n, generator=g) * 1.5 + torch.where(y, 2.0, -1.0), y

    a, b = fit_platt(*sample(500))
    z, y = sample(20000)
    p = torch.sigmoid(a * z.double() + b)
    for lo, hi in ((0.0, 0.2), (0.2, 0.5), (0.5, 0.8), (0.8, 1.0)):
        sel = (p >= lo) & (p < hi)
        assert abs(float(y[sel].double().mean()) - float(p[sel].mean())) < 0.05
    assert wilson(0, 10)["lo"] == 0.0 and 0.0 < wilson(0, 10)["hi"] < 0.35


def test_rule_keeps_the_probability_basis_that_flags_more_unsafe_images():
    """Negatives that swallow the unsafe images' mass break the neglabel basis; closed_set is kept, and the
    service's probabilities (promptclip.decisions) reproduce the calibration's flags."""
    from promptclip.decisions import Banks, BatchScores, DecisionRule, DomainBank, decide_batch
    from training.calibrate import fit_rule
    from training.config import DecisionConfig

    g = torch.Generator().manual_seed(0)
    n, c = 400, 4
    y = torch.arange(n) % c
    unsafe = torch.tensor([True, False, False, False])
    z_lab = torch.randn(n, c, generator=g) + 4.0 * torch.nn.functional.one_hot(y, c)  # labels separate well
    z_neg = torch.where(unsafe[y], 8.0, 0.0) + torch.randn(n, generator=g)  # negatives take the unsafe ones
    log_all = torch.logaddexp(torch.logsumexp(z_lab, 1), z_neg).unsqueeze(1)
    mass = (torch.logsumexp(z_lab, 1, keepdim=True) - log_all).exp().squeeze(1)
    scores = BatchScores(z_lab / 10, z_lab.softmax(1), z_lab - log_all, mass, torch.zeros(n), torch.full((n,), c))
    fitted = fit_rule(scores, torch.zeros(n), y, unsafe, DecisionConfig())
    d = fitted.decision
    assert d["probability_basis"] == "closed_set"
    assert d["calibration_recall"]["closed_set"] > d["calibration_recall"]["neglabel"] + 0.3
    labels = [type("L", (), {"name": str(i), "unsafe": bool(unsafe[i]), "threshold": fitted.threshold,
                             "calibration": cal}) for i, cal in enumerate(fitted.calibrations)]
    rule = DecisionRule.from_manifest(labels, d)
    banks = Banks.stack([DomainBank(torch.eye(c, 8), torch.zeros(0, 8), None, rule)])
    flagged = decide_batch(scores, torch.zeros(n, dtype=torch.long), banks).flagged
    assert abs(float(flagged[unsafe[y]].double().mean()) - d["calibration_recall"]["closed_set"]) < 0.02


@pytest.mark.slow
def test_ddp_world_size_2_matches_world_size_1(world, grouped, tiny_json, tmp_path):
    """torchrun, 2 CPU processes over gloo: each takes half of every task's samples."""
    fast = [a if a != "test-tiny" else str(tiny_json) for a in FAST]
    args = ["train", "--data", str(world), "--groups", str(grouped / "groups.json"), *fast]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for nproc, out in ((2, tmp_path / "ws2"), (1, tmp_path / "ws1")):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "training", *args, "--out", str(out)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = prompts_of(tmp_path / "ws1"), prompts_of(tmp_path / "ws2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    init = torch.load(tmp_path / "ws2" / "models" / "group_private-s0" / "last.pt", weights_only=False)
    assert init["step"] == 6


def _drift(world, run, variant="group_private"):
    """Mean L1 distance of the prompted image features of photo's test images to the frozen ones."""
    from promptclip import PromptedCLIP
    from training.data import ImageCache, load_tasks
    from training.decisions import image_features
    from training.train import load_final

    torch.manual_seed(0)  # the CLI builds random-init CLIPs from seed 0
    clip = load_clip(ModelSpec(model="test-tiny", pretrained=None))
    enc = PromptedCLIP(clip.model)
    data = load_tasks(world, val_per_class=2, domains=DOMAINS)
    model, _ = load_final(Path(run) / "models" / f"{variant}-s0" / "final.pt", enc, clip.tokenizer, data)
    x = ImageCache(clip.preprocess).load([p for p, _ in data["photo"].test])
    with torch.no_grad():
        feats = image_features(model, model.tasks.index("photo"), x)
        return float((feats - enc.encode_image(x)).abs().mean()), model


def test_consistency_keeps_prompted_features_near_the_frozen_ones(world, grouped, trained, tmp_path):
    from promptclip import label_tokens
    from training.consistency import _strip_slots

    torch.manual_seed(0)
    tok = load_clip(ModelSpec(model="test-tiny", pretrained=None)).tokenizer
    texts = ["a photo of a knife.", "a photo of a flower."]
    assert torch.equal(_strip_slots(label_tokens(tok, texts, 3), 3), tok(texts))  # what bare CLIP reads
    assert train(world, grouped, tmp_path, "--lr", "0.5", "--consistency-image", "50", "--consistency-text", "50",
                 "--consistency-kl", "5") == 0
    assert train(world, grouped, tmp_path / "free", "--lr", "0.5", "--consistency-image", "0", "--consistency-text", "0",
                 "--consistency-kl", "0") == 0
    held, _ = _drift(world, tmp_path)
    free, _ = _drift(world, tmp_path / "free")
    assert held < 0.5 * free, (held, free)


def test_label_cache_is_what_training_evaluates_and_the_bundle_serves(world, grouped, tmp_path):
    from promptclip import bundle_bank

    assert train(world, grouped, tmp_path, "--cache-weights", "0.5") == 0
    saved = torch.load(tmp_path / "models" / "group_private-s0" / "final.pt", weights_only=False)
    assert set(saved["label_cache"]) == set(DOMAINS)
    assert all(c.shape == (8, 32) and c.dtype == torch.float16 for c in saved["label_cache"].values())
    _, model = _drift(world, tmp_path)
    assert model.cache_weights == {d: 0.5 for d in DOMAINS}  # one candidate: every domain takes it
    store = tmp_path / "store"
    assert main(["export", "--run", str(tmp_path), "--store", str(store)]) == 0
    b = PromptStore(store).load_current("photo")
    assert b.manifest.prompt["cache_weight"] == 0.5 and b.tensors["labels.cache"].shape == (8, 32)
    bank, _ = bundle_bank(b, model.encoder, load_clip(ModelSpec(model="test-tiny", pretrained=None)).tokenizer, "cpu")
    with torch.no_grad():  # inference: the cache blends in (training's grad path reads the text alone)
        blended = model.text_features("photo").float()
    torch.testing.assert_close(bank.labels, blended, rtol=1e-5, atol=1e-6)


def test_runs_trained_in_parallel_are_the_serial_runs(world, grouped, tmp_path, capsys):
    """--jobs 2 trains evaluate's runs in two worker processes: the same bytes as one after another."""
    runs = {}
    for jobs in (2, 1):
        run = runs[jobs] = tmp_path / f"jobs{jobs}"
        run.mkdir()
        (run / "groups.json").write_text((grouped / "groups.json").read_text())
        assert main(["evaluate", "--data", str(world), "--run", str(run), *FAST, "--seeds", "0", "1",
                     "--jobs", str(jobs), "--bootstrap", "50"]) == 0
        err = capsys.readouterr().err
        assert ("training runs (2 at once)" in err) == (jobs == 2)
        assert ("private_only s1" in err) == (jobs == 1)  # the workers' runs show no bar of their own
    finals = sorted(p.relative_to(runs[1]) for p in runs[1].glob("models/*/final.pt"))
    assert len([f for f in finals if "zero_shot" not in str(f)]) == 10  # 5 trained variants x 2 seeds
    for rel in finals:
        a, b = (torch.load(runs[j] / rel, weights_only=False) for j in (2, 1))
        assert a["key"] == b["key"] and a["prompts"].keys() == b["prompts"].keys()
        assert all(torch.equal(a["prompts"][k], b["prompts"][k]) for k in a["prompts"]), rel
    reports = [json.loads((runs[j] / "report.json").read_text()) for j in (2, 1)]
    assert reports[0]["variants"] == reports[1]["variants"]


def test_a_lowpass_domain_is_trained_exported_and_served_on_blurred_images(world, grouped, tmp_path):
    """--lowpass-domains: the bundle records the blur, and the service's runner applies it before the
    prompted pass exactly as export measured the bundle (the same answers); the other domains have none."""
    from promptclip import Banks, bundle_bank
    from promptclip.lowpass import lowpass
    from promptclip.runner import ModelRunner
    from training.data import ImageCache, load_tasks
    from training.decisions import decide_images

    assert train(world, grouped, tmp_path, "--lowpass-domains", "photo", "--lowpass-sigma", "0.8") == 0
    store = tmp_path / "store"
    assert main(["export", "--run", str(tmp_path), "--store", str(store), "--allow-unflaggable"]) == 0
    served = PromptStore(store)
    assert served.load_current("photo").lowpass == 0.8
    assert all("input_lowpass" not in served.load_current(d).manifest.prompt for d in DOMAINS if d != "photo")

    _, model = _drift(world, tmp_path)
    assert model.lowpass == {"photo": 0.8}
    clip = load_clip(ModelSpec(model="test-tiny", pretrained=None))
    ti = model.tasks.index("photo")
    images = ImageCache(clip.preprocess).load([p for p, _ in load_tasks(world, val_per_class=2)["photo"].test[:6]])
    bundle = served.load_current("photo")
    bank, _ = bundle_bank(bundle, model.encoder, clip.tokenizer, "cpu")
    banks, runner = Banks.stack([bank]), ModelRunner(model.encoder)
    prompts = bundle.vision_prompts().expand(len(images), -1, -1, -1)
    rows = torch.zeros(len(images), dtype=torch.long)
    got = runner.decide(images, prompts, rows, banks).answers(banks)
    want = decide_images(model, ti, images, bank, float(model.encoder.logit_scale))
    assert [a["labels"] for a in got] == [a["labels"] for a in want]
    # the prompted pass read the blurred images (cosines; a zero-shot guard's bare pass reads them unfiltered)
    unfiltered = Banks.stack([replace(bank, lowpass=0.0)])
    cosines = lambda answers: [[lab["score"] for lab in a["labels"]] for a in answers]  # noqa: E731
    blurred = runner.decide(lowpass(images, 0.8), prompts, rows, unfiltered).answers(unfiltered)
    assert cosines(got) == cosines(blurred)
    assert cosines(got) != cosines(runner.decide(images, prompts, rows, unfiltered).answers(unfiltered))
