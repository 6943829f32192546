"""A corpus of hostile requests against the real server: each gets its documented 4xx quickly, and the
server keeps answering normal requests right after. (Issue 5; test_service.py covers the plain bad inputs.)"""

from __future__ import annotations

import random
import struct
import time
import zlib

import httpx
import pytest

from tests.integration.test_service import HOPPER, post_one

pytestmark = pytest.mark.slow
TIME_BOUND_S = 60  # catches a hang, not slowness: every answer here needs milliseconds of work on any host


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_claiming(width: int, height: int) -> bytes:
    """A 69-byte PNG whose header declares width x height: a tiny IDAT, then IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


def many_parts(count: int, *, files: bool) -> tuple[bytes, str]:
    boundary = "hostileboundary"
    part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\nx\r\n"
        )
        if files
        else f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
    )
    return (part * count + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


def _raw(data: bytes, kind: str = "image/jpeg"):
    return lambda url: httpx.post(f"{url}/v1/predict", content=data, headers={"Content-Type": kind}, timeout=60)


def _parts(count: int, files: bool):
    body, kind = many_parts(count, files=files)
    return lambda url: httpx.post(f"{url}/v1/predict/batch", content=body, headers={"Content-Type": kind}, timeout=60)


CORPUS = {
    "zero-bytes": (_raw(b""), 400, "empty"),
    "random-bytes": (_raw(random.Random(7).randbytes(50_000)), 400, "not_an_image"),
    "json-as-image": (_raw(b'{"image": "https://example.com/cat.jpg"}'), 400, "not_an_image"),
    "html-as-png": (_raw(b"<!doctype html><html><body>hi</body></html>", "image/png"), 400, "not_an_image"),
    "png-header-claims-10-gigapixels": (
        _raw(png_header_claiming(100_000, 100_000), "image/png"),
        400,
        "too_many_pixels",
    ),
    "truncated-png-header": (_raw(png_header_claiming(64, 64)[:20], "image/png"), 400, "corrupt_image"),
    "thousands-of-file-parts": (_parts(5000, files=True), 400, "too_many_images"),
    "thousands-of-text-fields": (_parts(5000, files=False), 400, "bad_multipart"),
    "malformed-boundary": (
        lambda url: httpx.post(
            f"{url}/v1/predict",
            content=b"--a\r\nnonsense\r\n--a",
            headers={"Content-Type": "multipart/form-data; boundary="},
            timeout=60,
        ),
        400,
        "bad_multipart",
    ),
    "wrong-content-type": (_raw(HOPPER, "application/json"), 415, "unsupported_media_type"),
    "pickle-payload": (
        _raw(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.", "application/vnd.bentoml+pickle"),
        415,
        "unsupported_media_type",
    ),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_request_gets_its_4xx_quickly(server, name):
    send, status, reason = CORPUS[name]
    start = time.monotonic()
    response = send(server)
    assert time.monotonic() - start < TIME_BOUND_S
    assert response.status_code == status, response.text[:500]
    assert response.json()["error"]["reason"] == reason
    assert post_one(server, HOPPER).status_code == 200  # and the server is fine


@pytest.mark.parametrize("filename", ["фото 猫 🐱.jpg", "x" * 4000 + ".jpg", "../../etc/passwd", "a\u202eb.jpg"])
def test_odd_file_names_are_just_names(server, filename):
    response = httpx.post(f"{server}/v1/predict", files={"image": (filename, HOPPER, "image/jpeg")}, timeout=60)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["filename"] == filename
