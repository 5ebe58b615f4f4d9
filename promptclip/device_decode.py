"""Device JPEG decode and open_clip's eval preprocess on tensors.

`decode_jpeg_batch_gpu` decodes JPEG bytes with nvjpeg on the device (PIL fallback), and
`preprocess_batch` does open_clip's resize / centre-crop / normalise on tensors, on whatever
device the decoded images live, so no per-image work stays on the CPU.
`DeviceJpegPreprocessor` is the seam a service decoder calls before its PIL path.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor


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


_thread_streams = threading.local()


@contextlib.contextmanager
def _nvjpeg_stream(device: torch.device) -> Iterator[torch.cuda.Stream]:
    """Make this thread's own stream on `device` current, with nothing queued on it.

    torchvision's `decode_jpeg(device="cuda")` writes from a stream of its own into memory the
    caching allocator hands out for the *current* stream, without waiting for that stream. A
    block freed while kernels queued there still used it (a forward pass's temporaries, the last
    image's resize) could be overwritten before they ran: seen on an H200 (`python -m bench gpu`)
    as NaN scores under load. On a private stream drained before every decode no queued kernel
    can still be using a free block. High priority: these kernels are small and someone waits
    for each; it also keeps them off the default-priority pool streams that graph capture uses.
    """
    streams = _thread_streams.__dict__.setdefault("by_device", {})
    stream = streams.get(device)
    if stream is None:
        stream = streams[device] = torch.cuda.Stream(device, priority=-1)
    stream.synchronize()
    with torch.cuda.stream(stream):
        yield stream


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
            caller = torch.cuda.current_stream(device)
            with _nvjpeg_stream(device) as stream:  # see _nvjpeg_stream: nvjpeg and the allocator
                try:
                    for i, t in zip(jpeg, decode_jpeg(raw, mode=ImageReadMode.RGB, device=device), strict=True):
                        out[i] = t
                except RuntimeError:  # one bad image fails the whole batch: retry one by one
                    for i, r in zip(jpeg, raw, strict=True):
                        with contextlib.suppress(RuntimeError):  # PIL below gets another try
                            out[i] = decode_jpeg(r, mode=ImageReadMode.RGB, device=device)
            caller.wait_stream(stream)
            for t in out:
                if t is not None:
                    t.record_stream(caller)  # not handed out again while the caller's kernels still read it
    for i, d in enumerate(data):
        if out[i] is None:
            try:
                out[i] = _decode_pil(d).to(device, non_blocking=True)
            except Exception as e:
                raise ValueError(f"image {i} could not be decoded: {type(e).__name__}: {e}") from None
    return out  # type: ignore[return-value]


@functools.lru_cache(maxsize=16)
def _scaled_mean_std(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """(3, 1, 1) mean * 255 and std * 255 on `device`, made once per device.

    Made per image, `torch.tensor(..., device="cuda")` is a blocking host-to-device copy: the
    decode thread waited for everything queued before it on the stream, a whole forward pass
    of the model thread included.
    """
    return (torch.tensor(mean, device=device, dtype=torch.float32).view(3, 1, 1) * 255.0,
            torch.tensor(std, device=device, dtype=torch.float32).view(3, 1, 1) * 255.0)


def preprocess_batch(images: Sequence[Tensor], image_size: int, mean: Sequence[float] = OPENAI_DATASET_MEAN,
                     std: Sequence[float] = OPENAI_DATASET_STD, dtype: torch.dtype = torch.float32) -> Tensor:
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
    m, s = _scaled_mean_std(dev, tuple(map(float, mean)), tuple(map(float, std)))
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

    def __init__(self, device: torch.device | str, image_size: int, mean: Sequence[float] = OPENAI_DATASET_MEAN,
                 std: Sequence[float] = OPENAI_DATASET_STD, max_pixels: int = 40_000_000, min_side: int = 1):
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
        """A baseline/progressive RGB or greyscale JPEG within limits, upright, ending in its EOI marker.

        nvjpeg decodes a truncated JPEG without an error (grey below the cut; seen on an H200), so
        a file that does not end in EOI (FF D9) goes to PIL, which refuses truncated data (400).
        """
        if data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
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
        """(3, S, S) float32 on `device`, or None: use the PIL path.

        On CUDA the work runs on this thread's own stream (see `_nvjpeg_stream`) and is finished
        on return, so any stream may read the result; a consumer on another stream that can free
        it with kernels still queued should `record_stream` it (the service's engine does).
        """
        if not self.accepts(data):
            return None
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if self.device.type != "cuda":
            try:
                img = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # corrupt: the PIL path raises the 400
                return None
            return preprocess_batch([img], self.image_size, self.mean, self.std)[0]
        with _nvjpeg_stream(self.device) as stream:
            try:
                img = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # corrupt: the PIL path raises the 400
                return None
            out = preprocess_batch([img], self.image_size, self.mean, self.std)[0]
            stream.synchronize()  # this image's kernels only: never the model's forward on another stream
        return out


    def many(self, data: Sequence[bytes]) -> list[Tensor | None]:
        """Per image, (3, S, S) float32 on `device` or None (use the PIL path), the accepted JPEGs decoded
        in one batched nvjpeg call (`decode_jpeg_batch_gpu`'s: a batch that fails is retried one by one)."""
        out: list[Tensor | None] = [None] * len(data)
        take = [i for i, d in enumerate(data) if self.accepts(d)]
        if not take:
            return out
        if self.device.type != "cuda":
            for i in take:
                out[i] = self(data[i])
            return out
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = [torch.frombuffer(bytearray(data[i]), dtype=torch.uint8) for i in take]
        with _nvjpeg_stream(self.device) as stream:
            try:
                imgs: list[Tensor | None] = list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:  # one corrupt image fails the batch: one by one, None for the corrupt ones
                imgs = []
                for r in raw:
                    try:
                        imgs.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError:
                        imgs.append(None)
            good = [(i, img) for i, img in zip(take, imgs, strict=True) if img is not None]
            if good:
                batch = preprocess_batch([img for _, img in good], self.image_size, self.mean, self.std)
                for k, (i, _) in enumerate(good):
                    out[i] = batch[k]
            stream.synchronize()  # these images' kernels only, as in __call__
        return out


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
