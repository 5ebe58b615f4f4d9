"""Training decodes through promptclip.images (the service's decode): the frozen world's pixels are unchanged."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from training.data import IMAGE_EXTS, ImageCache, load_tasks
from training.synth import write_world


def test_synth_world_pixels_are_those_of_a_plain_rgb_convert(tmp_path):
    write_world(tmp_path, seed=0, per_class=2, size=48)
    files = sorted(p for p in tmp_path.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    assert len(files) >= 7 * 8 * 2
    cache = ImageCache(lambda im: torch.from_numpy(np.asarray(im).copy()))
    for p in files:
        with Image.open(p) as im:
            before = np.asarray(im.convert("RGB"))  # what training did before it shared the service's decode
        assert np.array_equal(cache.load([p])[0].numpy(), before), p


def test_files_the_service_refuses_are_left_out_with_a_warning(tmp_path, caplog):
    write_world(tmp_path, seed=0, per_class=12, size=48)
    label = next(p for p in (tmp_path / "photo").iterdir() if p.is_dir())
    n = len(list(label.iterdir()))
    Image.new("RGB", (48, 48)).save(label / "scan.tif")
    (label / "notes.txt").write_text("not an image")
    data = load_tasks(tmp_path, domains=["photo"])
    d = data["photo"]
    listed = [p for p, _ in d.train_pool + d.val + d.test if p.parent == label]
    assert len(listed) == n and not any(p.suffix in (".tif", ".txt") for p in listed)
    assert "2 files left out" in caplog.text
