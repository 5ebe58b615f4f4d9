"""`python -m training.recalibrate`: the CLI, the verdicts it reads, the held-out split, the refusal of too few
verdicts; importing it loads no torch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import uuid

from review import NewItem, ReviewStore
from tests.service.serving import REPO, make_store
from training.recalibrate import Verdict, split, too_few

RECAL = REPO / "training" / "recalibrate.py"


def test_the_module_imports_no_torch():
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('r', {str(RECAL)!r}); "
            "m = importlib.util.module_from_spec(s); sys.modules['r'] = m; s.loader.exec_module(m); "
            "import argparse; p = argparse.ArgumentParser(); m.add_arguments(p); "
            "assert 'torch' not in sys.modules and 'sqlalchemy' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert importlib.util.find_spec("training.recalibrate") is not None


def verdicts(n_unsafe: int, n_benign: int) -> list[Verdict]:
    return ([Verdict(f"u{i}", "weapon", True, b"") for i in range(n_unsafe)]
            + [Verdict(f"b{i}", None, False, b"") for i in range(n_benign)])


def test_split_is_seeded_stratified_and_disjoint():
    v = verdicts(20, 80)
    fit, held = split(v, 0.3, seed=1)
    assert len(held) == 30 and sum(x.unsafe for x in held) == 6  # 30% of each stratum
    assert {x.id for x in fit} | {x.id for x in held} == {x.id for x in v}
    assert not {x.id for x in fit} & {x.id for x in held}
    assert split(v, 0.3, seed=1) == (fit, held) and split(v, 0.3, seed=2) != (fit, held)


def test_too_few_says_why():
    assert too_few(*split(verdicts(20, 80), 0.3, 0), 30) is None
    assert "at least 30" in too_few(*split(verdicts(5, 5), 0.3, 0), 30)
    assert "0 unsafe" in too_few(*split(verdicts(0, 60), 0.3, 0), 30)


def test_cli_refuses_too_few_verdicts_with_one_line(tiny_model, tmp_path):
    store_dir = tmp_path / "store"
    make_store(store_dir, tiny_model.clip)
    url = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    rs = ReviewStore(url)
    rs.migrate()
    answer = {"top_label": "cat", "flagged": False, "needs_review": True, "labels": []}
    ids = [str(uuid.uuid4()) for _ in range(6)]
    rs.add([NewItem(i, f"img{k}".encode(), "image/png", "photo", "v0001", "needs_review", answer, time.time())
            for k, i in enumerate(ids)])
    for k, i in enumerate(ids):
        rs.decide(i, "weapon" if k % 2 else None, bool(k % 2), "ana")
    rs.close()
    versions = sorted(p.name for p in (store_dir / "photo").iterdir())
    r = subprocess.run([sys.executable, "-m", "training.recalibrate", "--reviews", url, "--store", str(store_dir),
                        "--domain", "photo"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("recalibrate:")]
    assert lines == ["recalibrate: photo: too few verdicts: 6 usable verdicts; recalibration needs at least 30 "
                     "(--min-reviews)"], r.stderr
    assert sorted(p.name for p in (store_dir / "photo").iterdir()) == versions  # nothing published


def test_cli_help():
    r = subprocess.run([sys.executable, "-m", "training.recalibrate", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "--reviews" in r.stdout and "--holdout" in r.stdout


def synthetic_verdicts(store: ReviewStore, domain: str, n: int, seed: int) -> int:
    """n fresh images of the synthetic world, queued and decided with their true label."""
    import io

    import numpy as np

    from training.synth import LABELS, render

    rng = np.random.default_rng(seed)
    names = list(LABELS)
    items = []
    for k in range(n):
        label = names[k % len(names)]
        buf = io.BytesIO()
        render(domain, label, rng, size=48).save(buf, "PNG")
        answer = {"top_label": label, "flagged": False, "needs_review": True, "out_of_scope": False, "labels": []}
        items.append((NewItem(str(uuid.uuid4()), buf.getvalue(), "image/png", domain, "v0001", "needs_review",
                              answer, time.time()), label))
    store.add([it for it, _ in items])
    for it, label in items:
        store.decide(it.id, label, LABELS[label], "ana")
    return n


def test_recalibrate_publishes_a_version_the_service_reloads(tmp_path):
    import shutil

    from promptclip import PromptStore
    from tests.service.serving import running_server

    demo = REPO / "prompts_store" / "photo"
    try:
        PromptStore(REPO / "prompts_store").load_current("photo").calibration()
    except ValueError as e:  # a demo store this checkout's code refuses is the demo's problem, not this test's
        import pytest

        pytest.skip(f"demo bundles not loadable here: {e}")
    store_dir = tmp_path / "store"
    shutil.copytree(demo, store_dir / "photo")
    url = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    rs = ReviewStore(url)
    rs.migrate()
    n = synthetic_verdicts(rs, "photo", 96, seed=20261201)
    rs.close()
    env = {"MODERATION_STORE_DIR": str(store_dir), "MODERATION_ADMIN_TOKEN": "adm", "MODERATION_REVIEW_DB": "off"}
    with running_server(env) as srv, srv.client() as c:
        assert c.get("/domains").json()["domains"][0]["version"] == "v0001"
        r = subprocess.run([sys.executable, "-m", "training.recalibrate", "--reviews", url, "--store",
                            str(store_dir), "--domain", "photo"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        assert f"held-out verdicts: {round(n / 2 * 0.3) * 2}" in out  # 30% of each stratum (48 unsafe, 48 benign)
        for rate in ("false_flag", "unsafe_recall", "unsafe_caught", "review_rate"):
            line = next(ln for ln in out.splitlines() if ln.startswith(rate))
            assert line.count("[") == 2, line  # before and after, each with its interval
        assert "published photo v0002 (was v0001; 68 verdicts used, 28 held out)" in out
        reload = c.post("/admin/reload", headers={"Authorization": "Bearer adm"}).json()
        assert reload["ok"] and reload["domains"] == {"photo": "v0002"}, reload
        served = c.get("/domains").json()["domains"][0]
        assert served["version"] == "v0002" and served["decision"]["calibration"]["reviews"] == 68
    fresh = PromptStore(store_dir).load_current("photo")
    old = PromptStore(REPO / "prompts_store").load_current("photo")
    for name in ("vision.group", "vision.private", "text.group", "text.private"):  # same prompt tensors
        assert fresh.tensors[name].equal(old.tensors[name])
