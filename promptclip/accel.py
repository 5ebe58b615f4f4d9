"""The image tower's fast path for serving: CUDA graphs per batch bucket, GPU JPEG decode.

`ImageRunner` is what a serving engine calls instead of `PromptedCLIP.encode_image`:

* on CUDA it pads the batch up to a fixed bucket size, copies images and prompts into static
  buffers and replays a CUDA graph captured once per (bucket, prompt shape). A ViT-B at bs1 is
  launch-bound in eager mode (hundreds of small kernels); a replay is one launch.
* on CPU it is the plain eager path (bit-identical to `encode_image`): launch overhead does
  not exist there and padding would only add FLOPs.

`decode_jpeg_batch_gpu` decodes JPEG bytes with nvjpeg on the device (PIL fallback), and
`preprocess_batch` does open_clip's resize / centre-crop / normalise on tensors, on whatever
device the decoded images live, so no per-image work stays on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .prompted import PromptedCLIP

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    images: Tensor  # (bucket, 3, H, W) static input, model dtype, on the device
    prompts: Tensor | None  # (bucket, depth, n, Wv) static input, or None for bare CLIP
    out: Tensor  # (bucket, E) static output


class ImageRunner:
    """Normalised image embeddings for mixed-domain batches, as fast as the device allows.

    Args:
        encoder: the frozen prompt-aware CLIP (its device and dtype are used as they are).
        buckets: batch sizes graphs are captured for; a batch is padded up to the next one and
            a batch above the largest is run in chunks of the largest.
        cuda_graphs: replay CUDA graphs (default: True on a CUDA device, False elsewhere).
        compile: wrap `encode_image` in `torch.compile` (captured into the graphs on CUDA).
            Off by default: it costs minutes of start-up and buys little once graphs remove
            the launch overhead.

    Call it as ``runner(images (B, 3, H, W), prompts (B, depth, n, Wv) | None) -> (B, E)``.
    Thread-safe: the static buffers of a graph are shared, so replays are serialised.
    """

    def __init__(self, encoder: PromptedCLIP, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 cuda_graphs: bool | None = None, compile: bool = False):
        buckets = tuple(sorted({int(b) for b in buckets}))
        if not buckets or buckets[0] < 1:
            raise ValueError(f"buckets must be positive batch sizes, got {buckets}")
        self.encoder = encoder
        self.buckets = buckets
        self.device = encoder.clip.visual.conv1.weight.device
        self.dtype = encoder.dtype
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the encoder on a CUDA device, it is on {self.device}")
        self.cuda_graphs = cuda_graphs
        self._encode: Callable[..., Tensor] = encoder.encode_image
        if compile:
            self._encode = torch.compile(encoder.encode_image, dynamic=False)
        self._graphs: dict[tuple[int, int, int], _Graph] = {}
        self._pool = None  # one CUDA memory pool shared by every captured graph
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public
    def __call__(self, images: Tensor, prompts: Tensor | None = None) -> Tensor:
        """(B, 3, H, W), (B, depth, n, Wv) | None -> (B, E) L2-normalised embeddings."""
        if prompts is not None and prompts.shape[0] != images.shape[0]:
            raise ValueError(f"images and prompts disagree on batch size: {images.shape[0]} vs {prompts.shape[0]}")
        if prompts is not None and prompts.shape[2] == 0:
            prompts = None
        with torch.inference_mode():
            if not self.cuda_graphs:
                return self._encode(images.to(self.device), None if prompts is None else prompts.to(self.device))
            top = self.buckets[-1]
            if images.shape[0] <= top:
                return self._replay(images, prompts)
            return torch.cat([self._replay(images[i:i + top], None if prompts is None else prompts[i:i + top])
                              for i in range(0, images.shape[0], top)])

    def bucket_for(self, batch: int) -> int:
        """The smallest bucket >= batch (the largest bucket for bigger batches, run in chunks)."""
        for b in self.buckets:
            if b >= batch:
                return b
        return self.buckets[-1]

    def warmup(self, image_size: int, prompt_shape: tuple[int, int] | None = None,
               buckets: Sequence[int] | None = None) -> None:
        """Capture the graphs up front (largest bucket first, so smaller ones reuse its pool).

        Args:
            image_size: H = W of the preprocessed images.
            prompt_shape: (depth, n) of the served bundles, or None for bare CLIP.
            buckets: which buckets to capture (default: all).
        """
        if not self.cuda_graphs:
            return
        depth, n = prompt_shape or (0, 0)
        with torch.inference_mode(), self._lock, torch.cuda.device(self.device):
            for b in sorted(buckets or self.buckets, reverse=True):
                self._graph(b, depth, n, image_size)

    @property
    def captured(self) -> list[tuple[int, int, int]]:
        """(bucket, depth, n) of every captured graph."""
        return sorted(self._graphs)

    # ------------------------------------------------------------------ CUDA graphs
    def _replay(self, images: Tensor, prompts: Tensor | None) -> Tensor:
        B = images.shape[0]
        depth, n = (0, 0) if prompts is None else (prompts.shape[1], prompts.shape[2])
        with self._lock, torch.cuda.device(self.device):  # capture and replay on the encoder's GPU
            g = self._graph(self.bucket_for(B), depth, n, images.shape[-1], images.shape[-2])
            # Rows are independent through a ViT, so the pad rows keep whatever the last batch
            # left there: no need to zero them.
            g.images[:B].copy_(images, non_blocking=True)
            if prompts is not None:
                g.prompts[:B].copy_(prompts, non_blocking=True)
            g.graph.replay()
            return g.out[:B].clone()  # the static output is overwritten by the next replay

    def _graph(self, bucket: int, depth: int, n: int, width: int, height: int | None = None) -> _Graph:
        key = (bucket, depth, n)
        g = self._graphs.get(key)
        if g is not None:
            return g
        height = width if height is None else height
        enc = self.encoder
        images = torch.zeros(bucket, 3, height, width, device=self.device, dtype=self.dtype)
        prompts = (torch.zeros(bucket, depth, n, enc.vision_width, device=self.device, dtype=self.dtype)
                   if n else None)
        # Warm up on a side stream (cuBLAS handles, autotuning, torch.compile) so none of that
        # lands in the capture, as torch.cuda.graphs' documentation prescribes.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._encode(images, prompts)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: a graph captured lazily (a new prompt shape after a reload) must not
        # fail because a service thread decodes a JPEG on the GPU at that moment.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self._encode(images, prompts)
        g = _Graph(graph, images, prompts, out)
        self._graphs[key] = g
        log.info("captured CUDA graph for bucket %d (prompt depth %d, %d tokens)", bucket, depth, n)
        return g


# ---------------------------------------------------------------------- decode + preprocess
def _decode_pil(data: bytes) -> Tensor:
    """JPEG/PNG/... bytes -> (3, H, W) uint8 RGB on the CPU, EXIF orientation applied."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width, 3).permute(
            2, 0, 1)


def _exif_rotated(data: bytes) -> bool:
    """True when a JPEG's EXIF asks for a rotation/flip, which nvjpeg does not apply."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # unreadable: let the decoder report it
        return False


def decode_jpeg_batch_gpu(data: Sequence[bytes], device: torch.device | str = "cuda",
                          check_exif: bool = True) -> list[Tensor]:
    """Decode images to (3, H, W) uint8 RGB tensors on `device`.

    On CUDA the JPEGs go to nvjpeg in one batched call (`torchvision.io.decode_jpeg(device=...)`).
    Whatever nvjpeg refuses (a non-JPEG, CMYK, a corrupt file: the batched call fails as a
    whole) and every image on a CPU device goes through PIL, one by one, then to `device`.

    Args:
        data: encoded images.
        device: where the decoded tensors should live.
        check_exif: route JPEGs with an EXIF rotation to PIL (nvjpeg ignores EXIF). Costs a
            header parse per image; turn off when uploads are known to be upright.

    Raises:
        ValueError: an image that neither decoder can read; the message gives its index.
    """
    device = torch.device(device)
    out: list[Tensor | None] = [None] * len(data)
    if device.type == "cuda":
        jpeg = [i for i, d in enumerate(data) if d[:3] == b"\xff\xd8\xff" and not (check_exif and _exif_rotated(d))]
        if jpeg:
            from torchvision.io import ImageReadMode, decode_jpeg

            raw = [torch.frombuffer(bytearray(data[i]), dtype=torch.uint8) for i in jpeg]
            try:
                for i, t in zip(jpeg, decode_jpeg(raw, mode=ImageReadMode.RGB, device=device), strict=True):
                    out[i] = t
            except RuntimeError:  # one bad image fails the whole batch: retry one by one
                for i, r in zip(jpeg, raw, strict=True):
                    with contextlib.suppress(RuntimeError):  # PIL below gets another try
                        out[i] = decode_jpeg(r, mode=ImageReadMode.RGB, device=device)
    for i, d in enumerate(data):
        if out[i] is None:
            try:
                out[i] = _decode_pil(d).to(device, non_blocking=True)
            except Exception as e:
                raise ValueError(f"image {i} could not be decoded: {type(e).__name__}: {e}") from None
    return out  # type: ignore[return-value]


def preprocess_batch(images: Sequence[Tensor], image_size: int, mean: Sequence[float] = OPENAI_MEAN,
                     std: Sequence[float] = OPENAI_STD, dtype: torch.dtype = torch.float32) -> Tensor:
    """open_clip's eval transform on decoded tensors, on their own device: (B, 3, S, S).

    Resize the shorter side to `image_size` (bicubic, antialiased), centre-crop a square,
    scale to [0, 1] and normalise. Matches the PIL pipeline to within resampling differences
    (a few 1e-2 in normalised units at most), not bit for bit.

    Args:
        images: (3, H, W) uint8 tensors, e.g. from `decode_jpeg_batch_gpu`.
        image_size: the model's input size S.
        mean, std: per-channel normalisation (open_clip's `preprocess_cfg`).
        dtype: output dtype (the model's).
    """
    if not images:
        raise ValueError("preprocess_batch needs at least one image")
    dev = images[0].device
    out = torch.empty(len(images), 3, image_size, image_size, device=dev, dtype=dtype)
    m = torch.tensor(mean, device=dev, dtype=torch.float32).view(3, 1, 1) * 255.0
    s = torch.tensor(std, device=dev, dtype=torch.float32).view(3, 1, 1) * 255.0
    for i, img in enumerate(images):  # sizes differ per image; the resize is the only per-image op
        _, h, w = img.shape
        # torchvision's Resize(int): the short side becomes S, the long side int(S * long / short)
        nh, nw = (image_size, int(image_size * w / h)) if h <= w else (int(image_size * h / w), image_size)
        x = img.unsqueeze(0).float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = int(round((nh - image_size) / 2.0)), int(round((nw - image_size) / 2.0))  # CenterCrop's
        x = x[0, :, top:top + image_size, left:left + image_size].clamp_(0, 255)
        out[i] = (x - m) / s
    return out


class DeviceJpegPreprocessor:
    """Plain JPEG bytes -> (3, S, S) model input decoded and preprocessed on `device`.

    The seam a service decoder calls before its PIL path: it returns None for anything it
    does not take (not a JPEG, CMYK / odd modes, EXIF rotation, over the pixel limits,
    corrupt), so the PIL path handles those and raises its own precise errors. The header is
    read with PIL (no pixel decoded) to apply the same limits first.

    Args:
        device: where to decode (nvjpeg on CUDA; torchvision's libjpeg on CPU).
        image_size, mean, std: the model's preprocess (`model.visual.preprocess_cfg`).
        max_pixels: width * height above this is left to the PIL path (which refuses it).
        min_side: images with a smaller side are left to the PIL path (which refuses them).
    """

    def __init__(self, device: torch.device | str, image_size: int, mean: Sequence[float] = OPENAI_MEAN,
                 std: Sequence[float] = OPENAI_STD, max_pixels: int = 40_000_000, min_side: int = 1):
        self.device = torch.device(device)
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.max_pixels, self.min_side = max_pixels, min_side

    @classmethod
    def for_model(cls, model: torch.nn.Module, device: torch.device | str, **limits) -> DeviceJpegPreprocessor:
        """Read size, mean and std from an open_clip model's `visual.preprocess_cfg`."""
        cfg = model.visual.preprocess_cfg
        size = cfg["size"]
        return cls(device, int(size[0] if isinstance(size, (tuple, list)) else size), cfg["mean"], cfg["std"],
                   **limits)

    def accepts(self, data: bytes) -> bool:
        """A baseline/progressive RGB or greyscale JPEG within limits, upright."""
        if data[:3] != b"\xff\xd8\xff":
            return False
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                return (im.format == "JPEG" and im.mode in ("RGB", "L") and w * h <= self.max_pixels
                        and min(w, h) >= self.min_side and im.getexif().get(0x0112, 1) in (1, None))
        except Exception:  # hostile headers: the PIL path reports them
            return False

    def __call__(self, data: bytes) -> Tensor | None:
        """(3, S, S) float32 on `device`, or None: use the PIL path."""
        if not self.accepts(data):
            return None
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                              device=self.device)
        except RuntimeError:  # truncated / corrupt: the PIL path raises the 400
            return None
        return preprocess_batch([img], self.image_size, self.mean, self.std)[0]


def device_jpeg_preprocessor(model: torch.nn.Module, device: torch.device | str,
                             **limits) -> DeviceJpegPreprocessor | None:
    """A DeviceJpegPreprocessor matching `model`'s eval transform, or None if it cannot.

    Only open_clip's default eval transform (shortest-side bicubic resize, centre crop,
    normalise) is implemented on tensors; any other preprocess keeps the PIL path.
    """
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    if cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("interpolation", "bicubic") != "bicubic":
        return None
    size = cfg.get("size", model.visual.image_size)
    if isinstance(size, (tuple, list)) and size[0] != size[1]:
        return None
    return DeviceJpegPreprocessor.for_model(model, device, **limits)
