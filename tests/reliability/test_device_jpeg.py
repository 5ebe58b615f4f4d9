"""The GPU JPEG seam (promptclip.DeviceJpegPreprocessor, used by service.decode on CUDA) under
hostile JPEGs: it must hand every one of them back to the PIL path (return None, which then answers
the documented 4xx) and never raise or decode what PIL refuses. Runs on CPU (torchvision's libjpeg)
and, as a GPU twin, on CUDA (nvjpeg), where the server takes this path for every plain JPEG."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from promptclip import DeviceJpegPreprocessor
from service.decode import decode_image
from service.errors import ApiError
from tests.reliability.badinputs import encode, jpeg_header_bomb, noise
from tests.service.serving import image_bytes

LIMITS = dict(max_pixels=1_000_000, min_side=8)
PLAIN = encode(noise((96, 72), seed=21), "JPEG", quality=90)


def hostile() -> dict[str, bytes]:
    out = {f"truncated_{int(f * 100)}pct": PLAIN[: int(len(PLAIN) * f)] for f in (0.05, 0.3, 0.6, 0.95)}
    out.update({
        "header_bomb_65000": jpeg_header_bomb(),
        "over_pixel_limit_1200x1000": encode(Image.new("RGB", (1200, 1000), (5, 6, 7)), "JPEG"),
        "below_min_side_4x40": encode(Image.new("RGB", (40, 4), (5, 6, 7)), "JPEG"),
        "cmyk": image_bytes("cmyk"),
        "exif_rotated": image_bytes("exif"),
        "magic_then_garbage": b"\xff\xd8\xff" + bytes(range(256)) * 4,
        "magic_only": b"\xff\xd8\xff",
        "zero_bytes": b"",
    })
    return out


HOSTILE = hostile()


def devices() -> list:
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_jpeg_goes_back_to_the_pil_path(device, name):
    data = HOSTILE[name]
    assert DeviceJpegPreprocessor(device, 32, **LIMITS)(data) is None
    # and the PIL path refuses or handles it (no crash either way)
    try:
        decode_image(data, max_bytes=10**7, **LIMITS)
    except ApiError as e:
        assert 400 <= e.status < 500


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", ["rgb", "gray", "progressive"])
def test_plain_jpeg_is_decoded_like_pil(device, kind, rel_model):
    img = noise((96, 72), seed=22).resize((24, 18)).resize((96, 72), Image.BILINEAR)  # smooth: resizers agree
    data = encode(img.convert("L") if kind == "gray" else img, "JPEG", quality=95, progressive=kind == "progressive")
    out = DeviceJpegPreprocessor.for_model(rel_model.clip.model, device, **LIMITS)(data)
    assert out is not None and out.shape == (3, 32, 32) and torch.isfinite(out).all()
    # what the PIL path serves for the same bytes
    ref = rel_model.clip.preprocess(decode_image(data, max_bytes=10**7, **LIMITS))
    diff = (out.cpu() - ref).abs()
    print(f"{device} {kind}: mean |diff| {diff.mean():.4f}, max {diff.max():.4f}")
    assert diff.mean() < 0.05 and diff.max() < 0.5
