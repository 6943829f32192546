"""The error handlers every app of the service installs (service/http/app.py): a bug is a 500 that still names
its request, a client that hangs up is not a bug, a 405 says what is allowed, HEAD is GET without a body, a bad
Content-Length is a 400."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request

from service.http.app import error_body, handle_errors
from service.http.uploads import read_body


def _app() -> FastAPI:
    app = FastAPI()
    handle_errors(app, error_body)
    app.state.body_timeout_s = 0.5

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        return {"bytes": len(await read_body(request, 1000))}

    return app


def _call(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    messages: list[dict],
    *,
    then_stall: bool = False,
    pace_s: float = 0.0,
) -> dict[str, Any]:
    """One request straight through ASGI, the client sending ``messages``, then hanging up (or with ``then_stall``
    sending nothing more, its connection open), each message ``pace_s`` after the last; the answer's status,
    headers and body."""
    scope = {
        "type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
        "root_path": "", "scheme": "http", "query_string": b"", "headers": headers, "server": ("t", 80),
        "client": ("c", 1),
    }  # fmt: skip
    incoming, sent = list(messages), []

    async def receive() -> dict:
        if not incoming and then_stall:
            await asyncio.Event().wait()
        await asyncio.sleep(pace_s if incoming else 0)
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        try:
            await _app()(scope, receive, send)
        except RuntimeError:
            pass  # Starlette re-raises a 500's exception after answering, for the server to log

    asyncio.run(asyncio.wait_for(run(), 10))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": start["status"], "headers": dict(start["headers"]), "body": body}


def test_a_bug_is_a_500_that_names_its_request():
    answer = _call("GET", "/boom", [(b"x-request-id", b"trace-7")], [])
    assert answer["status"] == 500 and b"internal_error" in answer["body"]
    assert answer["headers"][b"x-request-id"] == b"trace-7"


def test_a_client_that_hangs_up_mid_upload_is_a_499_not_a_bug(caplog):
    headers = [(b"content-type", b"image/jpeg"), (b"content-length", b"500")]
    answer = _call("POST", "/upload", headers, [{"type": "http.request", "body": b"x" * 100, "more_body": True}])
    assert answer["status"] == 499 and b"client_closed" in answer["body"]
    assert "a bug" not in caplog.text


def test_a_405_says_which_methods_are_allowed():
    answer = _call("POST", "/boom", [], [{"type": "http.request", "body": b""}])
    assert answer["status"] == 405 and b"method_not_allowed" in answer["body"]
    assert answer["headers"][b"allow"] == b"GET"


def test_head_is_answered_as_get_and_a_post_only_route_still_refuses_it():
    """The app answers HEAD with GET's status and headers (the server, which parsed HEAD, leaves the body out)."""
    assert _call("HEAD", "/boom", [], [])["status"] == 500  # GET's answer: the route ran
    refused = _call("HEAD", "/upload", [], [])
    assert refused["status"] == 405 and refused["headers"][b"allow"] == b"POST"


def test_a_content_length_of_other_digits_is_a_400():
    headers = [(b"content-type", b"image/jpeg"), (b"content-length", "\u00b2".encode("latin-1"))]
    answer = _call("POST", "/upload", headers, [{"type": "http.request", "body": b"xx"}])
    assert answer["status"] == 400 and b"is not a number" in answer["body"]


def test_a_body_that_stalls_is_a_408_once_the_app_s_body_timeout_passes():
    headers = [(b"content-type", b"image/jpeg"), (b"content-length", b"500")]
    first = [{"type": "http.request", "body": b"x" * 100, "more_body": True}]
    answer = _call("POST", "/upload", headers, first, then_stall=True)
    assert answer["status"] == 408 and b"body_timeout" in answer["body"] and b"0.5 s" in answer["body"]
    slow_but_moving = [{"type": "http.request", "body": b"x" * 100, "more_body": True}] * 4
    slow_but_moving.append({"type": "http.request", "body": b"x" * 100})
    assert _call("POST", "/upload", headers, slow_but_moving, pace_s=0.2)["status"] == 200  # 1 s in all
