"""The bad-input matrix: hostile and broken uploads as real bytes, each with its documented answer.

Every `Case` is one kind of input a moderation pipeline meets in the wild. `build_matrix(limits)`
returns them all; `write_payloads(cases, directory)` writes each image payload to a real file
(the tests upload those files). The expected status and error codes follow DESIGN §6:

    400 undecodable or degenerate image, malformed body     413 too many bytes / pixels / items
    415 unsupported format or content type                  404 unknown domain (lists known ones)
    422 missing or invalid fields                           200 accepted variants (GIF, CMYK, ...)

Images are made with PIL (plus a hand-built PNG for the decompression bomb, which PIL cannot
allocate). Nothing here talks to a server.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from tests.service.serving import image_bytes

MARKER = b"RELIABILITY-MARKER-7f3a9c"  # embedded in uploads; must never reach the server log


@dataclass(frozen=True)
class Limits:
    """The server settings the matrix is built against (MODERATION_* of the test server)."""

    max_image_bytes: int = 256 * 1024
    max_image_pixels: int = 1_000_000
    min_image_side: int = 8
    max_batch_items: int = 8

    def env(self) -> dict[str, str]:
        return {"MODERATION_MAX_IMAGE_BYTES": str(self.max_image_bytes),
                "MODERATION_MAX_IMAGE_PIXELS": str(self.max_image_pixels),
                "MODERATION_MIN_IMAGE_SIDE": str(self.min_image_side),
                "MODERATION_MAX_BATCH_ITEMS": str(self.max_batch_items)}


@dataclass
class Case:
    """One kind of bad (or awkward) input and the documented answer.

    transport: how it is sent —
      "multipart"  POST /classify, files=[(field, bytes)], data={...}
      "json"       POST /classify, json=body
      "batch"      POST /classify/batch multipart, files=[("images", b) ...], data={"domains": [...]}
      "batch_json" POST /classify/batch, json=body
      "raw"        POST <path> with `content` bytes and `headers`
    status: the HTTP status; codes: accepted `error.code` values (empty for 200).
    same_as: for accepted variants, a PNG whose pixels the server must see identically
    (EXIF applied, first GIF frame, CMYK -> RGB): scores must match.
    """

    name: str
    transport: str
    status: int
    codes: tuple[str, ...] = ()
    path: str = "/classify"
    files: list[tuple[str, bytes]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    same_as: bytes | None = None
    differs_from: bytes | None = None  # e.g. the un-rotated pixels: proves EXIF orientation was applied
    item_statuses: list[int] | None = None  # batch: per-item statuses inside a 200
    method: str = "POST"
    note: str = ""
    known_failure: str = ""  # a finding not fixed yet: the test is a strict xfail with this reason


# ------------------------------------------------------------------ image makers
def noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_of(data: bytes) -> bytes:
    """Lossless PNG of what a careful decoder sees: first frame, EXIF orientation applied, RGB."""
    img = Image.open(io.BytesIO(data))
    img.seek(0)
    img.load()
    img = ImageOps.exif_transpose(img)
    return encode(img.convert("RGB"), "PNG")


def png_raw_rgb(data: bytes) -> bytes:
    """Lossless PNG of the stored pixels, ignoring EXIF orientation."""
    return encode(Image.open(io.BytesIO(data)).convert("RGB"), "PNG")


def png16_as_8bit(data: bytes) -> bytes:
    """The 8-bit gray PNG a 16-bit PNG means (v * 255 / 65535, rounded)."""
    arr = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64)
    return encode(Image.fromarray(np.rint(arr * 255.0 / 65535.0).astype(np.uint8), "L").convert("RGB"), "PNG")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit grayscale PNG of width*height zero pixels: tens of KB on disk, gigapixels decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_with_text(text: bytes, seed: int = 3) -> bytes:
    """A valid PNG carrying `text` in a tEXt chunk (the log-leak probe)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", text.decode())
    return encode(noise(seed=seed), "PNG", pnginfo=info)


def jpeg_with_comment(text: bytes, seed: int = 4) -> bytes:
    return encode(noise(seed=seed), "JPEG", quality=90, comment=text)


def corrupt_png() -> bytes:
    """PNG signature and IHDR intact, pixel data replaced by garbage."""
    good = bytearray(encode(noise(seed=5), "PNG"))
    start = good.index(b"IDAT") + 4
    good[start:start + 200] = bytes(range(200))
    return bytes(good)


def jpeg_header_bomb(side: int = 65_000) -> bytes:
    """A small JPEG whose SOF header claims side x side pixels."""
    data = bytearray(encode(noise(seed=8), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def gif_header_bomb(side: int = 65_535) -> bytes:
    """A small GIF whose logical screen and frame claim side x side pixels."""
    data = bytearray(encode(noise(seed=9).convert("P"), "GIF"))
    data[6:10] = struct.pack("<HH", side, side)
    desc = data.index(b"\x2c", 13 + 3 * 256)  # image descriptor after the global colour table
    data[desc + 5:desc + 9] = struct.pack("<HH", side, side)
    return bytes(data)


def tiff() -> bytes:
    return encode(noise(seed=6), "TIFF")


def multipart_body(boundary: str, parts: list[tuple[str, bytes, str | None]]) -> bytes:
    """A hand-built multipart body: (name, value, filename or None)."""
    out = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


# ------------------------------------------------------------------ the matrix
ERR_400_IMAGE = ("undecodable_image",)


def build_matrix(limits: Limits = Limits()) -> list[Case]:
    """Every kind of bad input, with its documented answer under `limits`."""
    jpeg = encode(noise(seed=1), "JPEG", quality=90)
    b64 = base64.b64encode(jpeg).decode()
    big = encode(noise((640, 480), seed=2), "PNG")  # incompressible noise: ~900 KB
    assert len(big) > limits.max_image_bytes
    over_pixels = encode(Image.new("L", (1200, 1000), 7), "PNG")  # 1.2 MP, a few KB
    assert len(over_pixels) < limits.max_image_bytes and limits.max_image_pixels < 1200 * 1000
    bomb = png_bomb()
    assert len(bomb) < limits.max_image_bytes
    exif, gif, cmyk, png16 = (image_bytes(k) for k in ("exif", "gif", "cmyk", "png16"))
    boundary = "relboundary42"
    photo = {"domain": "photo"}

    def mp(name: str, payload: bytes, status: int, codes: tuple[str, ...] = (), **kw) -> Case:
        return Case(name, "multipart", status, codes, files=[("image", payload)], data=kw.pop("data", photo), **kw)

    cases = [
        # --- undecodable, degenerate, oversized images (multipart /classify)
        mp("not_an_image", b"hello, this is plain text and not an image\n" * 4, 400, ERR_400_IMAGE),
        mp("truncated_jpeg", image_bytes("truncated"), 400, ERR_400_IMAGE),
        mp("zero_bytes", b"", 400, ("empty_image",)),
        mp("one_by_one", encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), 400, ("degenerate_image",)),
        mp("thin_strip_4x500", encode(Image.new("RGB", (500, 4), (9, 9, 9)), "PNG"), 400, ("degenerate_image",)),
        mp("decompression_bomb_png_20000x20000", bomb, 413, ("too_many_pixels",),
           note=f"{len(bomb)} bytes on disk, 400 megapixels decoded"),
        mp("over_pixel_limit_1200x1000", over_pixels, 413, ("too_many_pixels",)),
        mp("jpeg_header_bomb_65000x65000", jpeg_header_bomb(), 413, ("too_many_pixels",)),
        mp("gif_header_bomb_65535x65535", gif_header_bomb(), 413, ("too_many_pixels",)),
        mp("over_byte_limit", big, 413, ("image_too_large", "payload_too_large")),
        mp("corrupt_png_data", corrupt_png(), 400, ERR_400_IMAGE),
        mp("tiff_unsupported", tiff(), 415, ("unsupported_format",)),
        mp("pdf_unsupported", b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n", 415, ("unsupported_format",)),
        mp("svg_unsupported", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415,
           ("unsupported_format",)),
        mp("heic_unsupported", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, 415,
           ("unsupported_format",)),
        # --- accepted awkward variants: 200, and the server sees the pixels a careful decoder sees
        mp("animated_gif_first_frame", gif, 200, same_as=png_of(gif)),
        mp("png_16bit", png16, 200, same_as=png16_as_8bit(png16)),
        mp("cmyk_jpeg", cmyk, 200, same_as=png_of(cmyk)),
        mp("exif_rotated_jpeg", exif, 200, same_as=png_of(exif), differs_from=png_raw_rgb(exif)),
        # --- form fields
        Case("wrong_field_names", "multipart", 422, ("validation_error",), files=[("file", jpeg)],
             data={"domain_name": "photo"}),
        Case("missing_domain_field", "multipart", 422, ("validation_error",), files=[("image", jpeg)]),
        Case("missing_image_field", "multipart", 422, ("validation_error",), data=photo,
             files=[("other", b"x")]),
        Case("two_images_in_classify", "multipart", 422, ("validation_error",),
             files=[("image", jpeg), ("image", jpeg)], data=photo),
        Case("image_sent_as_text_field", "raw", 422, ("validation_error",),
             content=multipart_body(boundary, [("image", b"not a file", None), ("domain", b"photo", None)]),
             headers={"content-type": f"multipart/form-data; boundary={boundary}"}),
        Case("non_utf8_domain_field", "raw", 404, ("unknown_domain",),
             content=multipart_body(boundary, [("image", jpeg, "a.jpg"), ("domain", b"ph\xff\xfeoto\xc3", None)]),
             headers={"content-type": f"multipart/form-data; boundary={boundary}"},
             note="decoded with replacement characters, then an unknown domain"),
        Case("unterminated_multipart", "raw", 422, ("validation_error",),
             note="the parser drops the unterminated part; the missing field is reported",
             content=b"--relboundary42\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n"
                     + jpeg[:100],  # never closed
             headers={"content-type": f"multipart/form-data; boundary={boundary}"}),
        Case("multipart_without_boundary", "raw", 400, ("malformed_multipart",), content=b"whatever",
             headers={"content-type": "multipart/form-data"}),
        # --- domains
        mp("unknown_domain", jpeg, 404, ("unknown_domain",), data={"domain": "medical"}),
        mp("empty_domain", jpeg, 422, ("validation_error",), data={"domain": ""}),
        mp("whitespace_domain", jpeg, 404, ("unknown_domain",), data={"domain": "   "}, note="domains are matched verbatim"),
        mp("overlong_domain_10k", jpeg, 404, ("unknown_domain",), data={"domain": "p" * 10_000}),
        mp("path_domain_dotdot", jpeg, 404, ("unknown_domain",), data={"domain": "../x"}),
        mp("path_domain_nested", jpeg, 404, ("unknown_domain",), data={"domain": "photo/../sketch"}),
        mp("path_domain_absolute", jpeg, 404, ("unknown_domain",), data={"domain": "/etc/passwd"}),
        mp("nul_in_domain", jpeg, 404, ("unknown_domain",), data={"domain": "photo\x00"}),
        # --- JSON bodies
        Case("base64_garbage", "json", 400, ("invalid_base64",), json={"image": "%%%not*base64!!", "domain": "photo"}),
        Case("base64_of_non_image", "json", 400, ERR_400_IMAGE,
             json={"image": base64.b64encode(b"just text").decode(), "domain": "photo"}),
        Case("data_uri_prefix", "json", 200, json={"image": "data:image/jpeg;base64," + b64, "domain": "photo"},
             same_as=png_of(jpeg), note="documented as accepted"),
        Case("data_uri_not_base64", "json", 400, ("invalid_base64",),
             json={"image": "data:image/jpeg," + b64, "domain": "photo"}),
        Case("json_image_not_a_string", "json", 422, ("validation_error",), json={"image": 12345, "domain": "photo"}),
        Case("json_missing_domain", "json", 422, ("validation_error",), json={"image": b64}),
        Case("json_not_an_object", "json", 422, ("validation_error",), json=[1, 2, 3]),
        Case("invalid_json", "raw", 400, ("invalid_json",), content=b'{"image": "abc", "domain": ',
             headers={"content-type": "application/json"}),
        Case("json_deeply_nested", "raw", 400, ("invalid_json",), content=b"[" * 200_000 + b"]" * 200_000,
             headers={"content-type": "application/json"}, note="json.loads raises RecursionError, not ValueError"),
        Case("json_over_byte_limit", "json", 413, ("image_too_large", "payload_too_large"),
             json={"image": base64.b64encode(big).decode(), "domain": "photo"}),
        Case("unsupported_content_type", "raw", 415, ("unsupported_media_type",), content=jpeg,
             headers={"content-type": "text/plain"}),
        Case("raw_image_without_domain", "raw", 422, ("validation_error",), content=jpeg,  # no router here
             headers={"content-type": "image/jpeg"}),
        Case("raw_image_not_an_image", "raw", 400, ("undecodable_image",), path="/classify?domain=photo",
             content=b"not an image at all", headers={"content-type": "image/jpeg"}),
        Case("no_content_type", "raw", 415, ("unsupported_media_type",), content=jpeg, headers={}),
        # --- batches
        Case("batch_over_item_limit", "batch", 413, ("too_many_items",),
             path="/classify/batch", files=[("images", jpeg)] * (limits.max_batch_items + 1),
             data={"domains": "photo"}),
        Case("batch_json_over_item_limit", "batch_json", 413, ("too_many_items",), path="/classify/batch",
             json={"items": [{"image": b64, "domain": "photo"}] * (limits.max_batch_items + 1)}),
        Case("batch_length_mismatch", "batch", 422, ("validation_error",), path="/classify/batch",
             files=[("images", jpeg)] * 3, data={"domains": ["photo", "sketch"]}),
        Case("batch_empty_items", "batch_json", 422, ("validation_error",), path="/classify/batch",
             json={"items": []}),
        Case("batch_bad_item_fails_alone", "batch", 200, path="/classify/batch",
             files=[("images", jpeg), ("images", b"garbage"), ("images", jpeg), ("images", b"")],
             data={"domains": ["photo", "sketch", "unknown-domain", "comic"]}, item_statuses=[200, 400, 404, 400]),
        # --- wrong method
        Case("get_on_classify", "raw", 405, ("method_not_allowed",), method="GET"),
        Case("url_path_traversal", "raw", 404, ("not_found",), path="/%2e%2e/%2e%2e/etc/passwd", method="GET"),
        Case("unknown_route", "raw", 404, ("not_found",), path="/classify/../admin/reload/x", method="POST"),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def write_payloads(cases: list[Case], directory: Path) -> dict[str, list[Path]]:
    """Write every file payload of every case to `directory/<case>/<i>.bin`; returns the paths."""
    out: dict[str, list[Path]] = {}
    for c in cases:
        paths = []
        for i, (_, payload) in enumerate(c.files):
            p = Path(directory) / c.name / f"{i}.bin"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(payload)
            paths.append(p)
        out[c.name] = paths
    return out
