"""`fit` on a plain ImageFolder tree shaped like PACS: JPEG files, no labels.json, no
planted_groups.json, domain and class names the synthetic world never uses, and the model
given as an open_clip JSON config path (how a real architecture is named on the command line)."""

from __future__ import annotations

import json

from PIL import Image

from promptclip import PromptStore, load_bundle
from training import main, synth

from .conftest import FAST

DOMAINS = {"photo": "photo", "art_painting": "painting", "cartoon": "comic", "sketch": "sketch"}
CLASSES = {"dog": "heart", "guitar": "knife", "house": "house"}  # PACS-like names -> drawn icon


def _pacs_like(root):
    for domain, style in DOMAINS.items():
        for name, icon in CLASSES.items():
            (root / domain / name).mkdir(parents=True)
            for i in range(8):
                img: Image.Image = synth.render(style, icon, synth.image_rng(5, style, icon, i), size=40)
                img.save(root / domain / name / f"pic_{i:03d}.jpg", quality=90)


def test_fit_runs_on_a_plain_imagefolder_with_a_config_path(tmp_path, tiny_json):
    data, run, store = tmp_path / "pacs", tmp_path / "run", tmp_path / "store"
    _pacs_like(data)
    args = ["--model", str(tiny_json), "--pretrained", "", *FAST[FAST.index("--shots"):]]  # all domains
    assert main(["fit", "--data", str(data), "--out", str(run), "--store", str(store), *args,
                 "--group-steps", "4", "--group-snapshots", "2", "4"]) == 0

    groups = json.loads((run / "groups.json").read_text())["groups"]
    assert sorted(t for g in groups for t in g) == sorted(DOMAINS)
    report = json.loads((run / "report.json").read_text())["variants"]
    assert {"zero_shot", "private_only", "all_shared", "group_private", "global_group_private"} <= set(report)
    assert set(report["group_private"]["per_domain"]) == set(DOMAINS)

    st = PromptStore(store)
    assert st.domains() == sorted(DOMAINS)
    for domain in DOMAINS:
        b = load_bundle(st.path(domain, st.current_version(domain)))
        labels = {lab.name: lab for lab in b.manifest.labels}
        assert sorted(labels) == sorted(CLASSES)  # folder names become labels
        assert labels["dog"].prompt == "a photo of a dog." and not any(lab.unsafe for lab in labels.values())
        assert b.manifest.base_model["architecture"] == tiny_json.stem
        # calibrated per label; 6 calibration images cannot show a 5% false-flag rate, so nothing would flag
        assert all(lab.calibration["method"] == "platt" for lab in labels.values())
        assert b.manifest.decision["targets_met"]["max_false_flag"] is False and labels["guitar"].threshold > 1
