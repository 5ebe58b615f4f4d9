"""Reusable helpers for service tests: a tiny model + store factory and a real uvicorn subprocess.

    from tests.service.serving import make_tiny_model, make_store, running_server, tiny_env

    model = make_tiny_model(tmp_path)
    make_store(tmp_path / "store", model.clip)
    with running_server(tiny_env(model, tmp_path / "store", MODERATION_ADMIN_TOKEN="t")) as srv:
        httpx.get(srv.url + "/domains")
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file

from promptclip import (
    Label,
    LoadedCLIP,
    ModelSpec,
    PromptConfig,
    PromptStore,
    TaskPrompts,
    bundle_from_prompts,
    load_clip,
)
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[2]

LABELS: dict[str, list[Label]] = {
    "photo": [Label("weapon", "a photo of a weapon.", unsafe=True, threshold=0.4),
              Label("flower", "a photo of a flower."), Label("cat", "a photo of a cat.")],
    "sketch": [Label("nudity", "a sketch of a nude body.", unsafe=True, threshold=0.5),
               Label("house", "a sketch of a house."), Label("tree", "a sketch of a tree."),
               Label("car", "a sketch of a car.")],
    "comic": [Label("gore", "a comic panel with gore.", unsafe=True, threshold=0.6),
              Label("hero", "a comic panel of a hero.")],
}


@dataclass
class TinyModel:
    config: Path  # open_clip JSON config; its stem is the architecture name
    checkpoint: Path  # local safetensors checkpoint
    clip: LoadedCLIP  # loaded exactly as the server will load it (same BaseModelInfo)


def make_tiny_model(directory: Path, name: str = "svc-tiny", seed: int = 0) -> TinyModel:
    """A random-init tiny CLIP written as JSON config + safetensors, as a server subprocess can load it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / f"{name}.json"
    cfg.write_text(json.dumps(TINY))
    torch.manual_seed(seed)
    model = load_clip(ModelSpec(model=str(cfg), pretrained=None)).model
    ckpt = directory / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return TinyModel(cfg, ckpt, load_clip(ModelSpec(model=str(cfg), pretrained=str(ckpt))))


def make_prompts(clip: LoadedCLIP, domains: list[str], tokens: tuple[int, int] = (2, 2), seed: int = 0,
                 groups: list[list[str]] | None = None, depth: int | None = None) -> TaskPrompts:
    i = clip.info
    p = TaskPrompts(domains, groups or [list(domains)], PromptConfig(tokens[0], tokens[1], depth),
                    i.vision_width, i.vision_layers, i.text_width, i.text_layers)
    p.reset_parameters(std=0.5, generator=torch.Generator().manual_seed(seed))
    return p


def publish(store: PromptStore, clip: LoadedCLIP, domain: str, version: str, *, labels: list[Label] | None = None,
            tokens: tuple[int, int] = (2, 2), seed: int = 0, accuracy: float = 0.5, make_current: bool = True):
    """Publish one bundle version of `domain` with random prompts."""
    prompts = make_prompts(clip, [domain], tokens, seed)
    bundle = bundle_from_prompts(prompts, domain, version=version, base=clip.info,
                                 labels=list(labels or LABELS[domain]), metrics={"accuracy": accuracy})
    return store.publish(bundle, base=clip.info, make_current=make_current)


def make_store(root: Path, clip: LoadedCLIP, domains: dict[str, list[Label]] | None = None,
               tokens: dict[str, tuple[int, int]] | None = None, version: str = "v0001", seed: int = 0) -> PromptStore:
    """A store with one bundle per domain (default: photo, sketch, comic). `tokens` sets (group, private) per domain."""
    store = PromptStore(root)
    for k, (domain, labels) in enumerate((domains or LABELS).items()):
        publish(store, clip, domain, version, labels=labels, tokens=(tokens or {}).get(domain, (2, 2)), seed=seed + k)
    return store


def tiny_env(model: TinyModel, store_dir: Path, **extra: str) -> dict[str, str]:
    """MODERATION_* settings serving `model` and `store_dir` on CPU."""
    env = {"MODERATION_MODEL": str(model.config), "MODERATION_PRETRAINED": str(model.checkpoint),
           "MODERATION_STORE_DIR": str(store_dir), "MODERATION_DEVICE": "cpu"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log_path: Path
    final_log: str | None = None  # the whole log, kept once the server has stopped

    def log(self) -> str:
        """Everything the server process wrote so far (stdout + stderr)."""
        if self.final_log is not None:
            return self.final_log
        return self.log_path.read_text(errors="replace")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60.0), **kw)

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)


@contextlib.contextmanager
def running_server(env: dict[str, str] | None = None, *, cwd: Path = REPO, startup_timeout: float = 180.0,
                   clean_env: bool = True, port: int | None = None, test_defaults: bool = True) -> Iterator[Server]:
    """Start `python -m service` on a free port with `env` settings; yield once /readyz answers 200.

    MODERATION_* variables of the calling environment are dropped (unless clean_env=False).
    `test_defaults` adds host 127.0.0.1, a free port and one torch thread; with
    `test_defaults=False, env={}` the server runs with no settings at all (port 8000).
    """
    port = port or (free_port() if test_defaults else 8000)
    base = {k: v for k, v in os.environ.items() if not (clean_env and k.startswith("MODERATION_"))}
    defaults = {"MODERATION_HOST": "127.0.0.1", "MODERATION_PORT": str(port), "MODERATION_TORCH_THREADS": "1"}
    full = {**base, **(defaults if test_defaults else {}), "PYTHONUNBUFFERED": "1", **(env or {})}
    log_fd, log_name = tempfile.mkstemp(prefix="service-", suffix=".log")
    log_path = Path(log_name)
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=cwd, env=full, stdout=log_fd,
                            stderr=subprocess.STDOUT)
    os.close(log_fd)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} during startup:\n{server.log()[-4000:]}")
            try:
                if httpx.get(server.url + "/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {startup_timeout} s:\n{server.log()[-4000:]}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with contextlib.suppress(OSError):
            server.final_log = log_path.read_text(errors="replace")
            log_path.unlink()


# ------------------------------------------------------------------ real image files
def image_bytes(kind: str, size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    """Encoded test images. kind: jpeg png webp gif bmp cmyk gray palette rgba png16 exif truncated."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    buf = io.BytesIO()
    if kind == "jpeg":
        img.save(buf, "JPEG", quality=90)
    elif kind == "png":
        img.save(buf, "PNG")
    elif kind == "webp":
        img.save(buf, "WEBP")
    elif kind == "gif":  # animated: two frames
        frames = [img.convert("P"), Image.fromarray(255 - arr, "RGB").convert("P")]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "bmp":
        img.save(buf, "BMP")
    elif kind == "cmyk":
        img.convert("CMYK").save(buf, "JPEG")
    elif kind == "gray":
        img.convert("L").save(buf, "PNG")
    elif kind == "palette":
        img.convert("P").save(buf, "PNG")
    elif kind == "rgba":
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L"))
        rgba.save(buf, "PNG")
    elif kind == "png16":
        Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(buf, "PNG")
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 CW on display
        img.save(buf, "JPEG", exif=exif)
    elif kind == "truncated":
        img.save(buf, "JPEG", quality=90)
        return buf.getvalue()[: len(buf.getvalue()) // 2]
    else:
        raise ValueError(kind)
    return buf.getvalue()


def slow_multipart(data: bytes, domain: str, seconds: float, boundary: str = "drainboundary"):
    """A multipart body sent in pieces over `seconds`: the request is in flight the whole time."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"domain\"\r\n\r\n{domain}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    pieces = 10
    step = -(-len(body) // pieces)

    def gen():
        for i in range(0, len(body), step):
            yield body[i:i + step]
            time.sleep(seconds / pieces)

    return gen(), {"content-type": f"multipart/form-data; boundary={boundary}"}
