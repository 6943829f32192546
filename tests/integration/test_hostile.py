"""A corpus of hostile requests against the real server: each gets its documented 4xx quickly, and the
server keeps answering normal requests right after. (Issue 5; test_service.py covers the plain bad inputs.)"""

from __future__ import annotations

import random
import socket
import struct
import time
import zlib

import httpx
import pytest

from tests.integration.test_service import HOPPER, metrics_text, post_one
from tests.support.prom import samples

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


def _request_totals(url: str) -> dict[tuple[str, str], float]:
    """bentoml_service_request_total of the front, by (endpoint, status); parsing fails on a malformed text."""
    found = samples(metrics_text(url), "bentoml_service_request_total", service_name="image_classifier")
    return {(labels["endpoint"], labels["http_response_code"]): value for labels, value in found}


def _half_sent_upload(url: str) -> socket.socket:
    """A connection that has sent a /v1/predict request's headers, declaring 100,000 bytes, and 1,002 of them."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIME_BOUND_S)
    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
    sock.sendall(b"\xff\xd8" + b"x" * 1000)
    return sock


def test_paths_no_route_serves_share_one_metrics_label(server):
    scanned = ["/wp-login.php", f"/x{random.Random().randrange(10**9)}", "/q%0Dx", "/" + "a" * 5000]
    for path in [*scanned, "/v2/models/not-this-model"]:
        assert httpx.get(f"{server}{path}", timeout=30).status_code == 404
    totals = _request_totals(server)  # parses: a raw carriage return in a label would have broken it
    assert totals[("other", "404")] >= len(scanned) and totals[("/v2/models/{name}", "404")] >= 1
    assert not [endpoint for endpoint, _ in totals if "wp-login" in endpoint or "aaaa" in endpoint or "\r" in endpoint]


def test_a_client_that_hangs_up_mid_upload_is_a_499_not_a_500(server):
    before = _request_totals(server)
    _half_sent_upload(server).close()  # then the client goes away
    deadline = time.monotonic() + TIME_BOUND_S
    while _request_totals(server).get(("/v1/predict", "499"), 0) == before.get(("/v1/predict", "499"), 0):
        assert time.monotonic() < deadline, "the aborted upload was never answered"
        time.sleep(0.2)
    assert _request_totals(server).get(("/v1/predict", "500"), 0) == before.get(("/v1/predict", "500"), 0)
    assert post_one(server, HOPPER).status_code == 200


def test_a_body_that_stops_arriving_is_a_408_and_frees_its_budget(server):
    with _half_sent_upload(server) as sock:  # then nothing more, the connection kept open
        answer = b""
        while b"}}" not in answer and (part := sock.recv(65536)):
            answer += part
    text = answer.decode("latin-1")
    assert text.startswith("HTTP/1.1 408") and '"reason":"body_timeout"' in text, text[:300]
    assert "for 5 s" in text  # CLASSIFIER_BODY_TIMEOUT_S (conftest's SERVER_ENV), not the default
    held = [value for _, value in samples(metrics_text(server), "image_classifier_held_body_bytes")]
    assert held == [0.0]
