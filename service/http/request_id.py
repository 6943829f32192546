"""Request ids: every /v1 request has one (the client's X-Request-ID when it sends a usable one, else a new
one), echoed in the response's X-Request-ID header and in prediction answers, so feedback can refer to them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # UUIDs, ULIDs, trace ids; nothing that could be a path


def usable(request_id: str) -> bool:
    """Whether a client's id can be kept: 1-128 letters, digits, '.', '_', ':' or '-', and not '.' or '..'."""
    return _VALID.fullmatch(request_id) is not None and request_id not in (".", "..")


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIds:
    """ASGI middleware: the request's id in ``request.state.request_id`` and the X-Request-ID response header;
    a malformed X-Request-ID gets the response ``reject(message)``."""

    def __init__(self, app: ASGIApp, reject: Callable[[str], Response]) -> None:
        self.app, self.reject = app, reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), None)
        if given is not None and not usable(given):
            message = f"X-Request-ID {given[:40]!r} is not usable: send 1-128 letters, digits, '.', '_', ':' or '-'"
            await self.reject(message)(scope, receive, send)
            return
        request_id = given or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                message["headers"] = [*headers, (HEADER.encode(), request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)
