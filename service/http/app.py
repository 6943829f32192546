"""The public FastAPI app mounted at /v1: its OpenAPI description, request bodies, and the error handlers
that give every failure the one error shape (service/http/errors.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from classifier import __version__
from service.http.auth import CHALLENGE, RequireApiKey
from service.http.errors import ApiError, first_problem
from service.http.request_id import HEADER, RequestIds
from service.http.schemas import ErrorDetail, ErrorResponse, FeedbackRequest
from service.metrics import metrics

logger = logging.getLogger("service")

TITLE = "Image classifier"
DESCRIPTION = """Batched image classification with a transfer-learned model (transfer-serve).

- `POST /v1/predict`: one image (multipart field `image`, or a raw `image/*` body); `?top_k=N`.
- `POST /v1/predict/batch`: several images (multipart field `images`), results in the order sent.
- `POST /v1/explain`: one image (as /v1/predict): the prediction and a Grad-CAM heatmap of why, as JSON or, with
  `Accept: image/png`, the photo with the heatmap laid over it; `?target=<class>` explains another class.
- `POST /v1/feedback`: the true label of an answer (JSON `{"request_id", "index", "label"}`), or an image and its
  label (multipart fields `image` and `label`): counted in the live accuracy, kept for retraining.
- `GET /v1/model`: the served model's tag, classes, contract, engine, device, batching and limits.
- `GET /livez`, `GET /readyz`: health; `GET /metrics`: Prometheus metrics.
- `GET /`, `GET /docs.json`: this page and its OpenAPI document; `/v1/docs`, `/v1/openapi.json`: those of /v1 alone.

Every /v1 answer has an `X-Request-ID` header (the client's, when it sends a usable one).
Errors are JSON, `{"error": {"reason", "message", "file", "index"}}`, with a 4xx for every bad input,
503 with `Retry-After` when overloaded. With an API key configured, /v1 needs `Authorization: Bearer <key>` or
`X-API-Key: <key>`."""

api = FastAPI(title=TITLE, version=__version__, description=DESCRIPTION)
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (400, 401, 413, 415, 503)}
FEEDBACK_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 415)}
_FILE = {"type": "string", "format": "binary"}


def _request_body(field: str, file_schema: dict[str, Any], **other_content: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI request body: a multipart form with ``field`` required (endpoints read uploads themselves)."""
    form = {"type": "object", "required": [field], "properties": {field: file_schema}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}, **other_content}}}


ONE_IMAGE_BODY = _request_body("image", _FILE, **{"image/*": {"schema": _FILE}})
EXPLAIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {"schema": _FILE}}, "description": "JSON, or the overlay as PNG"},
    **ERRORS,
    501: {"model": ErrorResponse, "description": "explain is not installed in this image (no PyTorch)"},
}
FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": FeedbackRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "label"],
                    "properties": {"image": _FILE, "label": {"type": "string"}},
                }
            },
        },
    }
}
MANY_IMAGES_BODY = _request_body("images", {"type": "array", "items": _FILE})


def error_body(exc: ApiError) -> dict[str, Any]:
    """/v1's error shape: {"error": {"reason", "message", "file", "index"}}."""
    detail = ErrorDetail(reason=exc.reason, message=exc.message, file=exc.file, index=exc.index)
    return ErrorResponse(error=detail).model_dump()


def error_response(exc: ApiError, body: Callable[[ApiError], dict[str, Any]] = error_body) -> JSONResponse:
    """The answer to ``exc``: its status, ``body(exc)``, Retry-After on a 503, the challenge on a 401; counted in
    the rejected-inputs metric when it is the client's (4xx)."""
    if exc.status < 500:
        metrics().rejected.labels(exc.reason).inc()
    headers = {503: {"Retry-After": "1"}, 401: CHALLENGE}.get(exc.status)
    return JSONResponse(body(exc), status_code=exc.status, headers=headers)


class HeadAsGet:
    """Answer HEAD as GET: the same status and headers, and no body, which uvicorn leaves out by the method it
    parsed (RFC 9110, 9.3.2). Starlette does this for its plain routes (BentoML's /livez, /metrics), FastAPI's routes
    do not, and load balancers and uptime checks probe with HEAD. HEAD on a route with no GET is still a 405."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}  # a copy: the server's own scope keeps HEAD, so it sends no body
        await self.app(scope, receive, send)


def handle_errors(
    app: FastAPI, body: Callable[[ApiError], dict[str, Any]], open_without_key: Callable[[str], bool] | None = None
) -> None:
    """Answer every failure of ``app`` as an ApiError in the shape ``body`` gives, and give every request an id (a
    malformed X-Request-ID is a 400 ``bad_request_id``). An unexpected exception is a bug: logged, answered 500.
    HEAD is answered as GET (``HeadAsGet``). With ``open_without_key``, every other path needs the API key
    (``RequireApiKey``)."""

    def respond(exc: ApiError) -> JSONResponse:
        return error_response(exc, body)

    if open_without_key is not None:  # added first, so innermost: its 401 carries the request id
        app.add_middleware(RequireApiKey, is_open=open_without_key, refuse=respond)
    app.add_middleware(RequestIds, reject=lambda message: respond(ApiError(400, "bad_request_id", message)))
    app.add_middleware(HeadAsGet)

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return respond(exc)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        reason = {405: "method_not_allowed", 404: "not_found"}.get(exc.status_code, "bad_request")
        response = respond(ApiError(exc.status_code, reason, str(exc.detail)))
        response.headers.update(exc.headers or {})  # a 405's Allow
        return response

    async def client_gone(request: Request, _: Exception) -> JSONResponse:
        # The client's own doing (an aborted upload), so not a bug; nginx's 499 keeps it out of the 5xx figures.
        request_id = getattr(request.state, "request_id", None)
        logger.info("request %s: the client closed the connection before sending its whole body", request_id)
        return respond(ApiError(499, "client_closed", "the client closed the connection before sending its body"))

    async def invalid_parameter(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return respond(ApiError(400, "bad_parameter", first_problem(exc.errors())))

    async def bug(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        logger.exception("unexpected error (a bug) in request %s: %s", request_id, exc)
        response = respond(ApiError(500, "internal_error", "unexpected server error; it has been logged"))
        if request_id is not None:  # answered outside RequestIds, which adds it to every other answer
            response.headers[HEADER] = request_id
        return response

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_parameter)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, bug)


# Every /v1 route needs the key; the API's description (FastAPI's own routes) stays open.
handle_errors(
    api, error_body, {api.docs_url, api.openapi_url, api.redoc_url, api.swagger_ui_oauth2_redirect_url}.__contains__
)
