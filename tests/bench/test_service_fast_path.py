"""The service's seams for the fast path (promptclip.graphs, promptclip.device_decode) keep its answers and its errors.

CPU: the device-JPEG seam of ImageDecoder runs with torchvision's CPU decoder, so the same
code path as on CUDA is exercised; the GPU twin checks that tensors decoded on the GPU reach
the engine's upload. Correctness only.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from promptclip import DeviceJpegPreprocessor, device_jpeg_preprocessor

service_decode = pytest.importorskip("service.decode")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _jpeg(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32))
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    buf = io.BytesIO()
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _decoder(clip, device_jpeg):
    return service_decode.ImageDecoder(clip.preprocess, max_bytes=100_000, max_pixels=20_000, min_side=8,
                                       workers=1, device_jpeg=device_jpeg)


def test_device_jpeg_seam_matches_the_pil_path_and_keeps_its_errors(tiny_clip):
    fast = device_jpeg_preprocessor(tiny_clip.model, "cpu", max_pixels=20_000, min_side=8)
    assert isinstance(fast, DeviceJpegPreprocessor)
    with_seam, without = _decoder(tiny_clip, fast), _decoder(tiny_clip, None)
    try:
        jpeg = _jpeg(64, 40)
        png = io.BytesIO()
        Image.new("RGB", (20, 20), (1, 2, 3)).save(png, format="PNG")
        for data in (jpeg, png.getvalue()):
            got, want = asyncio.run(with_seam.decode(data)), asyncio.run(without.decode(data))
            assert got.shape == want.shape and (got - want).abs().max() < 0.1
        for bad, status in ((jpeg[: len(jpeg) // 2], 400), (_jpeg(400, 100), 413), (_jpeg(40, 4), 400),
                            (b"\xff\xd8\xff" + b"x" * 200_000, 413)):
            with pytest.raises(service_decode.ApiError) as e:
                asyncio.run(with_seam.decode(bad))
            assert e.value.status == status
    finally:
        with_seam.close()
        without.close()


def test_device_jpeg_preprocessor_declines_non_default_transforms(tiny_clip):
    visual = tiny_clip.model.visual
    saved = dict(visual.preprocess_cfg)
    try:
        visual.preprocess_cfg = {**saved, "resize_mode": "squash"}
        assert device_jpeg_preprocessor(tiny_clip.model, "cpu") is None
    finally:
        visual.preprocess_cfg = saved


@pytest.mark.gpu
@needs_cuda
def test_gpu_decoded_pixels_reach_the_engine_upload(tiny_clip):
    from promptclip import ModelSpec, PromptedCLIP, load_clip
    from service.engine import BatchingEngine

    clip = load_clip(ModelSpec(model=tiny_clip.spec.model, pretrained=None, device="cuda", precision="fp16"))
    fast = device_jpeg_preprocessor(clip.model, "cuda")
    dec = _decoder(clip, fast)
    try:
        on_gpu = asyncio.run(dec.decode(_jpeg(64, 40, seed=1)))
        png = io.BytesIO()
        Image.new("RGB", (20, 20), (1, 2, 3)).save(png, format="PNG")
        on_cpu = asyncio.run(dec.decode(png.getvalue()))
    finally:
        dec.close()
    assert on_gpu.device.type == "cuda" and on_cpu.device.type == "cpu"
    engine = BatchingEngine(PromptedCLIP(clip.model), max_batch=4, max_wait_ms=1, max_queue=8, timeout_s=5)
    batch = engine._upload([on_gpu, on_cpu])
    assert batch.device.type == "cuda" and batch.shape == (2, *on_gpu.shape)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_batched_device_decode_equals_one_by_one_and_leaves_the_rest_to_pil(tiny_clip, device):
    """`DeviceJpegPreprocessor.many` (one nvjpeg call for a request's JPEGs on CUDA) gives what one call
    per image gives; a corrupt JPEG in the batch, a PNG and a truncated JPEG come back None (the PIL path)."""
    fast = device_jpeg_preprocessor(tiny_clip.model, device, max_pixels=20_000, min_side=8)
    png = io.BytesIO()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(png, format="PNG")
    good = [_jpeg(64, 40, seed=s) for s in range(3)]
    corrupt = good[0][:200] + b"\x00" * 300 + good[0][-2:]  # header and EOI intact, scan data zeroed
    data = [good[0], png.getvalue(), good[1], good[2][: len(good[2]) // 2], corrupt, good[2]]
    got = fast.many(data)
    assert got[1] is None and got[3] is None
    for i in (0, 2, 5):
        assert got[i] is not None and torch.allclose(got[i], fast(data[i]), atol=1e-4)
    assert (got[4] is None) == (fast(corrupt) is None)
