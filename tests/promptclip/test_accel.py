"""The serving fast path (promptclip.graphs, promptclip.device_decode) computes what encode_image computes.

CPU tests check the eager path exactly; GPU twins (marked `gpu`, skipped without CUDA) check
the CUDA-graph path against eager within fp16 tolerance. Correctness only, never speed.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from promptclip import (
    ImageRunner,
    PromptConfig,
    PromptedCLIP,
    TaskPrompts,
    decode_jpeg_batch_gpu,
    preprocess_batch,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _bank(clip, tasks=3, group=2, private=3, seed=0) -> torch.Tensor:
    """(T, depth, n, Wv) vision prompts of `tasks` tasks, at a scale that really moves the output."""
    info = clip.info
    names = [f"t{i}" for i in range(tasks)]
    prompts = TaskPrompts(names, [names[:2], names[2:]], PromptConfig(group, private), info.vision_width,
                          info.vision_layers, info.text_width, info.text_layers)
    prompts.reset_parameters(std=0.5, generator=torch.Generator().manual_seed(seed))
    return prompts.vision_bank().detach()


def _jpeg(w: int, h: int, seed: int = 0, exif_orientation: int | None = None, subsampling: int = -1) -> bytes:
    g = torch.Generator().manual_seed(seed)
    # smooth content so that JPEG and resampling differences stay small
    base = torch.rand(3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    arr = (img * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    pil = Image.fromarray(arr)
    if exif_orientation is None:
        pil.save(buf, format="JPEG", quality=95, subsampling=subsampling)  # -1: PIL's default, 4:2:0
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        pil.save(buf, format="JPEG", quality=95, exif=exif, subsampling=subsampling)
    return buf.getvalue()


# ----------------------------------------------------------------------------- CPU, exact
@pytest.mark.parametrize("batch", [1, 3, 8, 13])
def test_cpu_runner_equals_encode_image_with_mixed_prompts(tiny_clip, batch):
    enc = PromptedCLIP(tiny_clip.model)
    runner = ImageRunner(enc)
    assert not runner.cuda_graphs
    bank = _bank(tiny_clip)
    torch.manual_seed(batch)
    images = torch.randn(batch, 3, 32, 32)
    task_idx = torch.randint(0, bank.shape[0], (batch,))
    with torch.no_grad():
        want = enc.encode_image(images, bank[task_idx])
    got = runner(images, bank[task_idx])
    assert got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.allclose(got.norm(dim=-1), torch.ones(batch), atol=1e-5)


def test_cpu_runner_bare_and_zero_tokens_equal_open_clip(tiny_clip):
    enc = PromptedCLIP(tiny_clip.model)
    runner = ImageRunner(enc)
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        bare = torch.nn.functional.normalize(tiny_clip.model.encode_image(images), dim=-1)
    empty = torch.zeros(5, enc.vision_layers, 0, enc.vision_width)
    for prompts in (None, empty):
        assert (runner(images, prompts) - bare).abs().max() <= 1e-5


def test_model_runner_bare_pass_of_no_image_is_empty(tiny_clip):
    """A batch with no guarded or routed row asks the bare tower for nothing: (0, E), not an error."""
    from promptclip.runner import ModelRunner

    runner = ModelRunner(PromptedCLIP(tiny_clip.model))
    some = runner.bare(torch.randn(2, 3, 32, 32))
    none = runner.bare(torch.randn(0, 3, 32, 32))
    assert none.shape == (0, some.shape[1]) and none.dtype == some.dtype == torch.float32


def test_runner_output_is_an_inference_tensor_without_grad(tiny_clip):
    runner = ImageRunner(PromptedCLIP(tiny_clip.model))
    out = runner(torch.randn(2, 3, 32, 32), _bank(tiny_clip)[[0, 1]])
    assert not out.requires_grad


def test_runner_rejects_mismatched_batch_and_graphs_without_cuda(tiny_clip):
    enc = PromptedCLIP(tiny_clip.model)
    with pytest.raises(ValueError, match="batch size"):
        ImageRunner(enc)(torch.randn(2, 3, 32, 32), _bank(tiny_clip)[[0, 1, 2]])
    with pytest.raises(ValueError, match="CUDA"):
        ImageRunner(enc, cuda_graphs=True)
    with pytest.raises(ValueError, match="positive"):
        ImageRunner(enc, buckets=(0, 4))


def test_bucket_for_pads_up_and_caps_at_the_largest(tiny_clip):
    runner = ImageRunner(PromptedCLIP(tiny_clip.model), buckets=(8, 1, 4, 2))
    assert runner.buckets == (1, 2, 4, 8)
    assert [runner.bucket_for(b) for b in (1, 2, 3, 5, 8, 9, 100)] == [1, 2, 4, 8, 8, 8, 8]


def test_cpu_warmup_runs_nothing(tiny_clip):
    """On CPU there is nothing to capture: warm-up must not run the model (start-up time)."""
    runner = ImageRunner(PromptedCLIP(tiny_clip.model))
    calls = []
    runner._encode = lambda *a: calls.append(a)
    runner.warmup(32, (2, 5))
    assert calls == [] and runner.captured == []


def test_decode_on_cpu_falls_back_to_pil_and_applies_exif():
    plain, rotated = _jpeg(40, 24, seed=1), _jpeg(40, 24, seed=2, exif_orientation=6)  # 6: rotate 90 CW
    png = io.BytesIO()
    Image.new("L", (7, 5), 128).save(png, format="PNG")
    out = decode_jpeg_batch_gpu([plain, rotated, png.getvalue()], device="cpu")
    assert [tuple(t.shape) for t in out] == [(3, 24, 40), (3, 40, 24), (3, 5, 7)]
    assert all(t.dtype == torch.uint8 and t.device.type == "cpu" for t in out)
    want = torch.from_numpy(np.array(Image.open(io.BytesIO(plain)).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(out[0], want)
    assert int(out[2].float().mean()) == 128


def test_decode_names_the_bad_image():
    with pytest.raises(ValueError, match="image 1"):
        decode_jpeg_batch_gpu([_jpeg(16, 16), b"\xff\xd8\xffnot really a jpeg"], device="cpu")


def test_preprocess_batch_matches_open_clip_preprocess(tiny_clip):
    data = [_jpeg(64, 48, seed=3), _jpeg(30, 90, seed=4), _jpeg(32, 32, seed=5)]
    got = preprocess_batch(decode_jpeg_batch_gpu(data, "cpu"), 32)
    want = torch.stack([tiny_clip.preprocess(Image.open(io.BytesIO(d))) for d in data])
    assert got.shape == want.shape == (3, 3, 32, 32)
    # PIL resamples in uint8; we resample in float: differences of a few grey levels at most
    assert (got - want).abs().max() < 0.1
    assert (got - want).abs().mean() < 0.01


# ----------------------------------------------------------------------------- GPU twins
def _cuda_clip(arch: str, precision: str = "fp16"):
    from promptclip import ModelSpec, load_clip

    torch.manual_seed(0)
    return load_clip(ModelSpec(model=arch, pretrained=None, device="cuda", precision=precision))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch", [1, 3, 8, 17])
def test_gpu_graph_replay_matches_eager(tiny_arch, batch):
    clip = _cuda_clip(tiny_arch)
    enc = PromptedCLIP(clip.model)
    runner = ImageRunner(enc, buckets=(1, 2, 4, 8, 16, 32))
    assert runner.cuda_graphs
    bank = _bank(clip).to("cuda", torch.float16)
    torch.manual_seed(batch)
    images = torch.randn(batch, 3, 32, 32, device="cuda")
    idx = torch.randint(0, bank.shape[0], (batch,), device="cuda")
    with torch.inference_mode():
        want = enc.encode_image(images, bank[idx]).float()
    for _ in range(2):  # capture, then a plain replay
        got = runner(images, bank[idx]).float()
        assert got.shape == want.shape
        assert (got - want).abs().max() < 2e-2
    assert runner.captured == [(runner.bucket_for(batch), bank.shape[1], bank.shape[2])]


@pytest.mark.gpu
@needs_cuda
def test_gpu_padding_rows_do_not_leak_and_cpu_inputs_are_copied(tiny_arch):
    clip = _cuda_clip(tiny_arch)
    enc = PromptedCLIP(clip.model)
    runner = ImageRunner(enc, buckets=(4,))
    bank = _bank(clip).to("cuda", torch.float16)
    big = torch.randn(4, 3, 32, 32)
    runner(big, bank[[0, 1, 2, 0]].cpu())  # leaves non-zero data in the pad rows
    small = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        want = enc.encode_image(small.cuda(), bank[[2, 2, 1]]).float()
    got = runner(small, bank[[2, 2, 1]].cpu()).float()  # CPU inputs: copied into the static buffers
    assert (got - want).abs().max() < 2e-2


@pytest.mark.gpu
@needs_cuda
def test_gpu_batches_above_the_largest_bucket_run_in_chunks_and_bare_works(tiny_arch):
    clip = _cuda_clip(tiny_arch)
    enc = PromptedCLIP(clip.model)
    runner = ImageRunner(enc, buckets=(1, 2, 4))
    runner.warmup(32, None)
    assert runner.captured == [(1, 0, 0), (2, 0, 0), (4, 0, 0)]
    images = torch.randn(11, 3, 32, 32, device="cuda")
    with torch.inference_mode():
        want = enc.encode_image(images).float()
    got = runner(images).float()
    assert got.shape == (11, want.shape[1])
    assert (got - want).abs().max() < 2e-2


@pytest.mark.gpu
@needs_cuda
@pytest.mark.slow
def test_gpu_graph_replay_matches_eager_on_vit_b_32():
    clip = _cuda_clip("ViT-B-32")
    enc = PromptedCLIP(clip.model)
    runner = ImageRunner(enc, buckets=(1, 8, 32))
    bank = _bank(clip).to("cuda", torch.float16)
    images = torch.randn(20, 3, 224, 224, device="cuda")
    idx = torch.arange(20, device="cuda") % bank.shape[0]
    with torch.inference_mode():
        want = enc.encode_image(images, bank[idx]).float()
    got = runner(images, bank[idx]).float()
    assert (got - want).abs().max() < 2e-2
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.999


@pytest.mark.gpu
@needs_cuda
@pytest.mark.slow
def test_gpu_compiled_graph_matches_eager(tiny_arch):
    clip = _cuda_clip(tiny_arch)
    enc = PromptedCLIP(clip.model)
    runner = ImageRunner(enc, buckets=(4,), compile=True)
    bank = _bank(clip).to("cuda", torch.float16)
    images = torch.randn(3, 3, 32, 32, device="cuda")
    with torch.inference_mode():
        want = enc.encode_image(images, bank[[0, 1, 2]]).float()
    assert (runner(images, bank[[0, 1, 2]]).float() - want).abs().max() < 2e-2


@pytest.mark.gpu
@needs_cuda
def test_gpu_jpeg_decode_matches_pil_and_falls_back():
    # 4:4:4 chroma: nvjpeg and libjpeg-turbo gave identical pixels on an H200
    data = [_jpeg(64, 48, seed=6, subsampling=0), _jpeg(33, 17, seed=7, subsampling=0),
            _jpeg(40, 24, seed=8, exif_orientation=6)]
    png = io.BytesIO()
    Image.new("RGB", (9, 9), (10, 200, 30)).save(png, format="PNG")
    out = decode_jpeg_batch_gpu(data + [png.getvalue()], device="cuda")
    ref = decode_jpeg_batch_gpu(data + [png.getvalue()], device="cpu")
    for got, want in zip(out, ref, strict=True):
        assert got.device.type == "cuda" and got.shape == want.shape
        assert (got.cpu().int() - want.int()).abs().max() <= 2  # IDCT rounding at most
    batch = preprocess_batch(out, 32, dtype=torch.float16)
    assert batch.shape == (4, 3, 32, 32) and batch.device.type == "cuda"
    # 4:2:0 chroma: the decoders upsample it differently (H200: mean 5.7 levels, max 32 on the
    # steep 33x17 gradient; 0.14 on a 640x480 photo-like image); the model's input barely moves
    sub = [_jpeg(64, 48, seed=6), _jpeg(33, 17, seed=7)]
    got = preprocess_batch(decode_jpeg_batch_gpu(sub, device="cuda"), 32)
    want = preprocess_batch(decode_jpeg_batch_gpu(sub, device="cpu"), 32)
    assert (got.cpu() - want).abs().mean() < 0.06


@pytest.mark.gpu
@needs_cuda
def test_gpu_jpeg_decode_never_overwrites_memory_a_queued_kernel_still_reads():
    """torchvision's nvjpeg writes from its own stream into memory allocated for the current
    stream, without waiting for it: NaN scores under load on an H200 (`python -m bench gpu`).
    Here a freed block is still to be read by a kernel queued behind a sleep when decoding starts."""
    from promptclip import DeviceJpegPreprocessor

    data = _jpeg(640, 480, seed=3)
    pre = DeviceJpegPreprocessor("cuda", 224)
    want, want_raw = pre(data).cpu(), decode_jpeg_batch_gpu([data], device="cuda")[0].cpu()
    n = 3 * 480 * 640 // 4  # float32 elements in as many bytes as the decoded image: the block it would get
    for decode in (lambda: pre(data), lambda: decode_jpeg_batch_gpu([data], device="cuda")[0]):
        busy = torch.full((n,), 1.0, device="cuda")
        torch.cuda.synchronize()
        torch.cuda._sleep(100_000_000)  # the current stream stays busy for tens of ms
        total = busy.sum()  # queued behind the sleep: still reads `busy`
        del busy  # its block is free for the allocator while that read waits
        got = decode()
        assert total.item() == n
        torch.cuda.synchronize()
        assert torch.equal(got.cpu(), want if got.dtype == want.dtype else want_raw)


@pytest.mark.gpu
@needs_cuda
def test_gpu_preprocess_batch_never_blocks_on_the_stream():
    """Decode threads must not wait for the model thread's forward pass queued on the same stream.

    Found on an H200 (bench gpu): preprocess_batch made its mean/std with torch.tensor(...,
    device="cuda") per call, a blocking host-to-device copy."""
    images = [torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, device="cuda") for _ in range(3)]
    preprocess_batch(images[:1], 32)  # the per-device constants are made once, here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = preprocess_batch(images, 32, dtype=torch.float16)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float16


def test_device_jpeg_preprocessor_matches_pil_and_declines_what_it_should(tiny_clip):
    from promptclip import DeviceJpegPreprocessor

    pre = DeviceJpegPreprocessor.for_model(tiny_clip.model, "cpu", max_pixels=10_000, min_side=8)
    assert pre.image_size == 32
    data = _jpeg(64, 48, seed=9)
    got = pre(data)
    want = tiny_clip.preprocess(Image.open(io.BytesIO(data)))
    assert got is not None and got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max() < 0.1
    png = io.BytesIO()
    Image.new("RGB", (16, 16)).save(png, format="PNG")
    cmyk = io.BytesIO()
    Image.new("CMYK", (16, 16)).save(cmyk, format="JPEG")
    for declined in (png.getvalue(), cmyk.getvalue(), _jpeg(200, 100), _jpeg(20, 4),
                     _jpeg(40, 24, exif_orientation=6), data[: len(data) // 3], b"\xff\xd8\xffjunk"):
        assert pre(declined) is None


@pytest.mark.gpu
@needs_cuda
def test_gpu_device_jpeg_preprocessor_matches_cpu(tiny_clip):
    from promptclip import DeviceJpegPreprocessor

    data = _jpeg(64, 48, seed=10)
    got = DeviceJpegPreprocessor.for_model(tiny_clip.model, "cuda")(data)
    want = DeviceJpegPreprocessor.for_model(tiny_clip.model, "cpu")(data)
    assert got.device.type == "cuda"
    assert (got.cpu() - want).abs().mean() < 0.05
