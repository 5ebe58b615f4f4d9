"""CUDA graphs per batch bucket: the image tower's fast path for serving.

`ImageRunner` is what a serving engine calls instead of `PromptedCLIP.encode_image`:

* on CUDA it pads the batch up to a fixed bucket size, copies images and prompts into static
  buffers and replays a CUDA graph captured once per (bucket, prompt shape). A ViT-B at bs1 is
  launch-bound in eager mode (hundreds of small kernels); a replay is one launch.
* on CPU it is the plain eager path (bit-identical to `encode_image`): launch overhead does
  not exist there and padding would only add FLOPs.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .prompted import PromptedCLIP

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    images: Tensor  # (bucket, 3, H, W) static input, model dtype, on the device
    prompts: Tensor | None  # (bucket, depth, n, Wv) static input, or None for bare CLIP
    out: Tensor | tuple[Tensor, Tensor]  # (bucket, E) static output; with taps also (bucket, layers, Wv)


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
        taps: also return the layer means the scope model reads (`PromptedCLIP.encode_image`).

    Call it as ``runner(images (B, 3, H, W), prompts (B, depth, n, Wv) | None) -> (B, E)``
    (with `taps`: ``((B, E), (B, layers, Wv))``).
    Thread-safe: the static buffers of a graph are shared, so replays are serialised.
    """

    def __init__(self, encoder: PromptedCLIP, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 cuda_graphs: bool | None = None, compile: bool = False, taps: bool = False):
        buckets = tuple(sorted({int(b) for b in buckets}))
        if not buckets or buckets[0] < 1:
            raise ValueError(f"buckets must be positive batch sizes, got {buckets}")
        self.encoder = encoder
        self.buckets = buckets
        self.device = encoder.device
        self.dtype = encoder.dtype
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the encoder on a CUDA device, it is on {self.device}")
        self.cuda_graphs = cuda_graphs
        encode = functools.partial(encoder.encode_image, taps=True) if taps else encoder.encode_image
        self._encode: Callable[..., Tensor] = torch.compile(encode, dynamic=False) if compile else encode
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
            parts = [self._replay(images[i:i + top], None if prompts is None else prompts[i:i + top])
                     for i in range(0, images.shape[0], top)]
            if isinstance(parts[0], tuple):
                return tuple(torch.cat(col) for col in zip(*parts, strict=True))
            return torch.cat(parts)

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
            if isinstance(g.out, tuple):  # the static outputs are overwritten by the next replay
                return tuple(o[:B].clone() for o in g.out)
            return g.out[:B].clone()

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
