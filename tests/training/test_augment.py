"""A client's trip (training.augment) for pretraining images and for prompt-training shots."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from training import main, synth
from training.augment import SIZES, reencode, trip_variants
from training.config import TrainConfig
from training.data import ImageCache
from training.runtime import Dist
from training.train import FewShot, _draw_batch


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


def _shots(n: int = 6, trips: int = 4) -> FewShot:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    shots = FewShot(images, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))
    shots.trips = torch.stack([images + 100 * (v + 1) for v in range(trips)])  # trip v of image i: 100(v+1) + i
    return shots


def test_trip_draws_swap_in_re_encoded_shots_and_leave_the_default_run_untouched():
    shots, idx = _shots(), [torch.arange(6)]
    off = TrainConfig(augment=False, batch_per_task=64)
    plain = _draw_batch(FewShot(shots.images, shots.labels, shots.tasks), idx, off, torch.Generator().manual_seed(0),
                        Dist())
    # the share at 0 (the default): the same draws, the same images, the trips never read
    same = _draw_batch(shots, idx, off, torch.Generator().manual_seed(0), Dist())
    assert torch.equal(plain[0], same[0])
    on = TrainConfig(augment=False, batch_per_task=64, reencoded_shots=0.5)
    x = _draw_batch(shots, idx, on, torch.Generator().manual_seed(0), Dist())[0][:, 0, 0, 0]
    swapped = x >= 100
    assert 0.25 < float(swapped.float().mean()) < 0.75  # about half of the draws
    assert set((x[swapped] // 100).long().tolist()) == {1, 2, 3, 4}  # every trip is drawn
    assert torch.equal(x, _draw_batch(shots, idx, on, torch.Generator().manual_seed(0), Dist())[0][:, 0, 0, 0])


def test_trip_variants_are_seeded_per_image_and_preprocessed_like_the_shots(tmp_path):
    paths = []
    for i, label in enumerate(["knife", "tree"]):
        paths.append(tmp_path / f"{i}.png")
        synth.render("comic", label, synth.image_rng(0, "comic", label, 0)).save(paths[-1])
    cache = ImageCache(lambda im: torch.from_numpy(np.asarray(im.resize((16, 16)), dtype=np.float32)).permute(2, 0, 1))
    a, b = trip_variants(cache.preprocess, paths, 3, seed=7), trip_variants(cache.preprocess, paths, 3, seed=7)
    assert a.shape == (3, 2, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, trip_variants(cache.preprocess, paths, 3, seed=8))
    assert not torch.equal(a[0], cache.load(paths))  # a trip changes the pixels
    assert (a[0] - cache.load(paths)).abs().mean() < 40  # not beyond recognition
