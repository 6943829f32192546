"""The public FastAPI app mounted at /v1: its OpenAPI description, request bodies, and the error handlers
that give every failure the one error shape (service/http/errors.py)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from classifier import __version__
from service.http.auth import CHALLENGE
from service.http.errors import ApiError, first_problem
from service.http.request_id import RequestIds
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


def error_response(exc: ApiError) -> JSONResponse:
    """The one error shape, counted in the rejected-inputs metric when it is the client's (4xx)."""
    if exc.status < 500:
        metrics().rejected.labels(exc.reason).inc()
    body = ErrorResponse(error=ErrorDetail(reason=exc.reason, message=exc.message, file=exc.file, index=exc.index))
    headers = {503: {"Retry-After": "1"}, 401: CHALLENGE}.get(exc.status)
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=headers)


api.add_middleware(RequestIds, reject=lambda message: error_response(ApiError(400, "bad_request_id", message)))


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = {405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return await _api_error(request, ApiError(exc.status_code, reason, str(exc.detail)))


@api.exception_handler(Exception)
async def _bug(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    logger.exception("unexpected error (a bug) in request %s: %s", request_id, exc)
    return await _api_error(request, ApiError(500, "internal_error", "unexpected server error; it has been logged"))


@api.exception_handler(RequestValidationError)
async def _invalid_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
    return await _api_error(request, ApiError(400, "bad_parameter", first_problem(exc.errors())))
