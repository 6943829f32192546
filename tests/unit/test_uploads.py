"""Request parsing and limits, on real Starlette requests (no server)."""

import asyncio

import httpx
import pytest
from starlette.requests import Request

from service.http.errors import ApiError
from service.http.uploads import image_and_label, many_images, read_body, single_image

MB = 1024 * 1024


def request(body: bytes, headers: dict[str, str], chunk: int | None = None) -> Request:
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    pending = list(chunks)

    async def receive():
        if pending:
            part = pending.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""}, receive)


def multipart(files: list[tuple[str, str, bytes]], data: dict | None = None) -> Request:
    built = httpx.Request(
        "POST", "http://x/", files=[(field, (name, content, "image/jpeg")) for field, name, content in files], data=data
    )
    body = built.read()
    return request(body, {"content-type": built.headers["content-type"], "content-length": str(len(body))})


def run(coro):
    return asyncio.run(coro)


def reason(coro) -> tuple[int, str, ApiError]:
    with pytest.raises(ApiError) as info:
        run(coro)
    return info.value.status, info.value.reason, info.value


def test_multipart_single_image():
    upload = run(single_image(multipart([("image", "a.jpg", b"abc")]), max_bytes=MB))
    assert upload.filename == "a.jpg" and upload.data == b"abc"


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/octet-stream"])
def test_raw_body(content_type):
    upload = run(single_image(request(b"xyz", {"content-type": content_type}), max_bytes=MB))
    assert upload.filename is None and upload.data == b"xyz"


def test_declared_and_streamed_size_limits():
    assert reason(read_body(request(b"x" * 10, {"content-length": "10"}), 9))[:2] == (413, "body_too_large")
    # A chunked body with no Content-Length is cut off as soon as it passes the limit.
    assert reason(read_body(request(b"x" * 100, {}, chunk=10), 50))[:2] == (413, "body_too_large")
    assert run(read_body(request(b"x" * 50, {}, chunk=10), 50)) == b"x" * 50


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: request(b"", {"content-type": "image/jpeg"}), (400, "empty")),
        (lambda: request(b"hi", {"content-type": "text/plain"}), (415, "unsupported_media_type")),
        (lambda: request(b"hi", {}), (415, "unsupported_media_type")),
        (lambda: multipart([("file", "a.jpg", b"abc")]), (400, "missing_field")),
        (lambda: multipart([("other", "a.jpg", b"x")], data={"image": "not a file"}), (400, "missing_field")),
        (lambda: multipart([("image", "a.jpg", b"")]), (400, "empty")),
        (lambda: multipart([("image", "a.jpg", b"1"), ("image", "b.jpg", b"2")]), (400, "too_many_images")),
        (
            lambda: request(b"--xx\r\ngarbage", {"content-type": "multipart/form-data; boundary=yy"}),
            (400, "bad_multipart"),
        ),
        (lambda: request(b"whatever", {"content-type": "multipart/form-data"}), (400, "bad_multipart")),
        (lambda: request(b"x", {"content-type": "image/png", "content-length": "abc"}), (400, "bad_request")),
    ],
    ids=[
        "empty-raw",
        "text",
        "no-type",
        "wrong-field",
        "text-field",
        "empty-file",
        "two-files",
        "bad-boundary",
        "no-boundary",
        "bad-length",
    ],
)
def test_single_image_refusals(make, expected):
    assert reason(single_image(make(), max_bytes=MB))[:2] == expected


def test_many_images_in_order_and_limits():
    files = [("images", f"{i}.jpg", bytes([i + 1])) for i in range(3)]
    uploads = run(many_images(multipart(files), max_bytes=MB, max_images=3))
    assert [u.filename for u in uploads] == ["0.jpg", "1.jpg", "2.jpg"]
    assert reason(many_images(multipart(files), max_bytes=MB, max_images=2))[:2] == (400, "too_many_images")
    status, why, err = reason(
        many_images(multipart([*files[:1], ("images", "e.jpg", b"")]), max_bytes=MB, max_images=5)
    )
    assert (status, why, err.file, err.index) == (400, "empty", "e.jpg", 1)
    assert reason(many_images(request(b"x", {"content-type": "image/png"}), max_bytes=MB, max_images=5))[0] == 415


def test_feedback_of_another_type_names_both_forms():
    status, why, err = reason(image_and_label(request(b"x", {"content-type": "text/plain"}), max_bytes=MB))
    assert (status, why) == (415, "unsupported_media_type")
    assert "application/json" in err.message and "multipart/form-data" in err.message


def test_a_multipart_body_cut_before_its_closing_boundary_is_bad_multipart():
    images = [("images", f"{i}.jpg", b"\xff\xd8 jpeg bytes %d" % i) for i in range(3)]
    whole = multipart(images)
    body, kind = run(read_body(whole, MB)), whole.headers["content-type"]
    cut = body[: body.rindex(b"\r\n--")]  # the last part's data all there, the closing boundary gone
    status, why, err = reason(many_images(request(cut, {"content-type": kind}), max_bytes=MB, max_images=5))
    assert (status, why) == (400, "bad_multipart") and "closing boundary" in err.message  # not 2 of the 3 images
    single = cut.split(b"\r\n--")[0]  # one part, cut
    assert reason(single_image(request(single, {"content-type": kind}), max_bytes=MB))[:2] == (400, "bad_multipart")
    assert len(run(many_images(request(body, {"content-type": kind}), max_bytes=MB, max_images=5))) == 3
    empty = reason(single_image(request(b"", {"content-type": kind}), max_bytes=MB))
    assert empty[:2] == (400, "missing_field")  # nothing sent at all: what is missing is the field
