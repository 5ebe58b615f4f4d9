"""A client's trip for pretraining images (training.augment) and the pretraining that uses it."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from safetensors import safe_open

from training import main, synth
from training.augment import SIZES, reencode


def test_reencode_is_seeded_and_keeps_a_servable_rgb_image_of_a_drawn_size():
    img = synth.render("comic", "knife", synth.image_rng(0, "comic", "knife", 0))
    trips = [reencode(img, np.random.default_rng([3, i])) for i in range(40)]
    again = [reencode(img, np.random.default_rng([3, i])) for i in range(40)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(trips, again, strict=True))
    sides = {t.size for t in trips}
    assert sides <= {(round(img.width * f), round(img.height * f)) for f in SIZES}
    assert len(sides) >= 3 and all(t.mode == "RGB" for t in trips)
    # every trip changes the pixels (JPEG at the own size, or a resampling), none beyond recognition
    same = [t for t in trips if t.size == img.size]
    assert same and all(not np.array_equal(np.asarray(t), np.asarray(img)) for t in same)
    back = [np.asarray(t.resize(img.size, Image.BICUBIC), dtype=np.float32) for t in trips]
    assert max(np.abs(b - np.asarray(img, dtype=np.float32)).mean() for b in back) < 40


def test_pretraining_on_reencoded_images_is_recorded_and_repeats_bit_for_bit(tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        assert main(["pretrain-tiny", "--images", "32", "--steps", "2", "--batch", "8", "--eval-per-class", "1",
                     "--reencoded", "0.5", "--out", str(out), "--threads", "1"]) == 0
        runs.append(out.read_bytes())
        with safe_open(str(out), "pt") as f:
            assert json.loads(f.metadata()["pretrain"])["reencoded"] == 0.5
    assert runs[0] == runs[1]
    # off (the default, the shipped model's recipe): the header records the recipe as it was before the option
    out = tmp_path / "off.safetensors"
    assert main(["pretrain-tiny", "--images", "32", "--steps", "2", "--batch", "8", "--eval-per-class", "1",
                 "--out", str(out), "--threads", "1"]) == 0
    with safe_open(str(out), "pt") as f:
        assert "reencoded" not in json.loads(f.metadata()["pretrain"])
    assert out.read_bytes() != runs[0]
