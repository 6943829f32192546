"""Request ids: echoed or made, on every answer, and a malformed one refused."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from service.http.request_id import RequestIds, usable


class _Client:
    """Requests to an in-process ASGI app."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.get(path, headers=headers)

        return asyncio.run(call())


def _client() -> _Client:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"seen": request.state.request_id})

    async def fail(request: Request) -> JSONResponse:
        return JSONResponse({"error": "x"}, status_code=400)

    app = Starlette(routes=[Route("/echo", echo), Route("/fail", fail)])
    app.add_middleware(RequestIds, reject=lambda message: PlainTextResponse(message, status_code=400))
    return _Client(app)


def test_the_clients_id_is_kept_and_echoed():
    response = _client().get("/echo", headers={"X-Request-ID": "trace-01:ab.C_d"})
    assert response.json() == {"seen": "trace-01:ab.C_d"} and response.headers["x-request-id"] == "trace-01:ab.C_d"


def test_a_new_id_for_each_request_without_one_also_on_errors():
    client = _client()
    first, second = client.get("/echo"), client.get("/echo")
    assert first.json()["seen"] == first.headers["x-request-id"] and len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert client.get("/fail").headers["x-request-id"]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a b", "x" * 129, "..", "id;rm"])
def test_a_malformed_id_is_refused(bad):
    assert not usable(bad)
    response = _client().get("/echo", headers={"X-Request-ID": bad})
    assert response.status_code == 400 and "X-Request-ID" in response.text
