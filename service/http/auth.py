"""Optional API key for the prediction endpoints (CLASSIFIER_API_KEY); health and metrics stay open.

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The key is compared in
constant time and never logged (the setting is a SecretStr, shown as '**********'). Routes take it as a FastAPI
dependency (``API_KEY``), which runs before their parameters are validated: without the key a request learns
nothing but 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from fastapi import Depends, Request
from pydantic import SecretStr

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


async def require_api_key(request: Request) -> None:
    """``check_api_key`` against the key the app was given at start-up (``app.state.api_key``: the setting, None
    when unset). An app never given one refuses to answer (a 500, a bug): a missed set-up must not leave it open."""
    state = request.scope["app"].state
    if not hasattr(state, "api_key"):
        raise RuntimeError("this app's state.api_key was never set; set it from CLASSIFIER_API_KEY at start-up")
    check_api_key(state.api_key, request.headers)


API_KEY = Depends(require_api_key)  # a coroutine, so FastAPI calls it on the event loop, not in a thread
