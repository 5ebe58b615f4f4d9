"""The fast multipart reader (service.multipart) against Starlette's parser, on the same bytes: where it
reads a body it reads what Starlette reads, and every body it declines still reaches Starlette."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.datastructures import UploadFile
from starlette.requests import Request

from service.multipart import parse_form

JPEG = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n" + b"\xff\xd9"


def starlette_form(content_type: str, body: bytes) -> list[tuple]:
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def parse() -> list[tuple]:
        scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
                 "headers": [(b"content-type", content_type.encode())]}
        form = await Request(scope, receive).form(max_files=70, max_fields=80)
        return await flatten(form)

    return asyncio.run(parse())


async def flatten(form) -> list[tuple]:
    out = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            out.append((key, "file", value.filename, value.content_type, await value.read()))
        else:
            out.append((key, "text", value))
    return out


def httpx_body(files, data) -> tuple[str, bytes]:
    req = httpx.Request("POST", "http://x/", files=files, data=data)
    return req.headers["content-type"], req.read()


COMMON = {
    "one image and a domain": ({"image": ("a.jpg", JPEG, "image/jpeg")}, {"domain": "photo"}),
    "one image, no domain": ({"image": ("a.png", b"\x89PNG", "image/png")}, {}),
    "a batch with domains": ([("images", (f"{i}.jpg", JPEG[i:], "image/jpeg")) for i in range(5)],
                             {"domains": ["photo", "sketch", "comic", "photo", "auto"]}),
    "an empty file": ({"image": ("empty.jpg", b"", "image/jpeg")}, {"domain": "photo"}),
    "a file with no content type": ({"image": ("x", JPEG)}, {"domain": "photo"}),
    "a non-ASCII text value": ({"image": ("a.jpg", JPEG, "image/jpeg")}, {"domain": "fotografía"}),
}


@pytest.mark.parametrize("name", list(COMMON))
def test_common_bodies_read_fast_and_alike(name):
    ctype, body = httpx_body(*COMMON[name])
    fast = parse_form(ctype, body, max_files=70, max_fields=80)
    assert fast is not None, name
    assert asyncio.run(flatten(fast)) == starlette_form(ctype, body)


B = "b0undary"
ODD = {
    "a quoted boundary": (f'multipart/form-data; boundary="{B}"',
                          f'--{B}\r\nContent-Disposition: form-data; name="domain"\r\n\r\nphoto\r\n--{B}--\r\n'),
    "a preamble": (f"multipart/form-data; boundary={B}",
                   f'hello\r\n--{B}\r\nContent-Disposition: form-data; name="domain"\r\n\r\nphoto\r\n--{B}--'),
    "an epilogue": (f"multipart/form-data; boundary={B}",
                    f'--{B}\r\nContent-Disposition: form-data; name="domain"\r\n\r\nphoto\r\n--{B}--\r\nbye'),
    "LF line ends": (f"multipart/form-data; boundary={B}",
                     f'--{B}\nContent-Disposition: form-data; name="domain"\n\nphoto\n--{B}--\n'),
    "another header": (f"multipart/form-data; boundary={B}",
                       f'--{B}\r\nContent-Disposition: form-data; name="domain"\r\nX-Extra: 1\r\n\r\nphoto\r\n--{B}--'),
    "an escaped quote in the filename": (
        f"multipart/form-data; boundary={B}",
        f'--{B}\r\nContent-Disposition: form-data; name="image"; filename="a\\"b.jpg"\r\n\r\nxyz\r\n--{B}--'),
    "a UTF-8 filename": (f"multipart/form-data; boundary={B}",
                         f'--{B}\r\nContent-Disposition: form-data; name="image"; filename="é.jpg"\r\n\r\nxyz\r\n'
                         f"--{B}--"),
    "no closing delimiter": (f"multipart/form-data; boundary={B}",
                             f'--{B}\r\nContent-Disposition: form-data; name="domain"\r\n\r\nphoto\r\n'),
    "the boundary inside a part": (f"multipart/form-data; boundary={B}",
                                   f'--{B}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--{B}y\r\n--{B}--'),
    "no boundary parameter": ("multipart/form-data", "--x\r\n\r\n--x--"),
}


@pytest.mark.parametrize("name", list(ODD))
def test_unusual_bodies_read_alike_or_go_to_starlette(name):
    ctype, text = ODD[name]
    fast = parse_form(ctype, text.encode(), max_files=70, max_fields=80)
    if name == "a quoted boundary":  # RFC 2046 allows it; read here
        assert fast is not None and asyncio.run(flatten(fast)) == starlette_form(ctype, text.encode())
    else:
        assert fast is None


def test_over_the_counts_goes_to_starlette():
    ctype, body = httpx_body(*COMMON["a batch with domains"])
    assert parse_form(ctype, body, max_files=4, max_fields=80) is None  # Starlette refuses it: 413 there
    assert parse_form(ctype, body, max_files=5, max_fields=4) is None
    assert parse_form(ctype, body, max_files=5, max_fields=5) is not None
