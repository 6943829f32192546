"""Optional API key for the prediction endpoints (CLASSIFIER_API_KEY); health and metrics stay open.

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The key is compared in
constant time and never logged (the setting is a SecretStr, shown as '**********'). ``RequireApiKey`` checks it
before routing, for every path of an app but those it leaves open.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="image-classifier"'}


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries, from ``Authorization: Bearer`` or ``X-API-Key``; None if neither."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


def check_api_key(expected: SecretStr | None, headers: Mapping[str, str]) -> None:
    """Nothing when no key is configured or the right one is presented; else ApiError 401."""
    if expected is None:
        return
    key = presented_key(headers)
    if key is None:
        raise ApiError(
            401,
            "unauthorized",
            "this endpoint needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        )
    if not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "the API key is not valid")


class RequireApiKey:
    """ASGI middleware: every request to the app needs the key, except where ``is_open(path)`` (the path within
    the app, its mount prefix left out). It runs before routing, so before a route's parameters and body are read:
    without the key a request learns nothing but 401 (or 400 for a malformed X-Request-ID, checked first). The key
    is the app's ``state.api_key`` (the setting, None when unset); an app never given one answers 500 (a bug) rather
    than open. A middleware, not a FastAPI dependency: with BentoML's dependency override on these apps, FastAPI
    would analyse a dependency's signature again on every request (service/bentoml_compat.py)."""

    def __init__(self, app: ASGIApp, *, is_open: Callable[[str], bool], refuse: Callable[[ApiError], Response]) -> None:
        self.app, self.is_open, self.refuse = app, is_open, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.is_open(route_path(scope)):
            state = scope["app"].state
            if not hasattr(state, "api_key"):
                raise RuntimeError("this app's state.api_key was never set; set it from CLASSIFIER_API_KEY at start-up")
            try:
                check_api_key(state.api_key, Headers(scope=scope))
            except ApiError as exc:
                await self.refuse(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The path the app's router matches: the request's, less the prefix the app is mounted at (``root_path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path
