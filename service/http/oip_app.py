"""The Open Inference Protocol's HTTP endpoints under /v2 (service/http/oip.py has its bodies), beside /v1.

Its inference goes through the same Predictor as /v1 (admission control, decoding limits, batching, metrics),
the same API key, and the same request ids and feedback memory: a /v2 answer's X-Request-ID can be given to
/v1/feedback. Errors take the protocol's shape, ``{"error": message}``, with the status /v1 would answer. The
health endpoints need no key, as /livez and /readyz do not.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from classifier import __version__
from classifier.store import ModelDescription
from service.feedback import Feedback
from service.http import oip
from service.http.auth import CHALLENGE, check_api_key
from service.http.errors import ApiError, first_problem
from service.http.request_id import RequestIds
from service.http.uploads import Upload, read_body
from service.metrics import metrics
from service.predictor import Predictor
from service.settings import ServiceSettings

logger = logging.getLogger("service")

v2 = FastAPI(title="Open Inference Protocol", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)


def oip_error(exc: ApiError) -> JSONResponse:
    """The protocol's error shape; a client's error (4xx) is counted as /v1's are."""
    if exc.status < 500:
        metrics().rejected.labels(exc.reason).inc()
    where = f"image {exc.index}: " if exc.index is not None else ""
    headers = {503: {"Retry-After": "1"}, 401: CHALLENGE}.get(exc.status)
    return JSONResponse({"error": where + exc.message}, status_code=exc.status, headers=headers)


v2.add_middleware(RequestIds, reject=lambda message: oip_error(ApiError(400, "bad_request_id", message)))


@v2.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return oip_error(exc)


@v2.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = {405: "method_not_allowed", 404: "not_found"}.get(exc.status_code, "bad_request")
    return oip_error(ApiError(exc.status_code, reason, str(exc.detail)))


@v2.exception_handler(RequestValidationError)
async def _invalid_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
    return oip_error(ApiError(400, "bad_parameter", first_problem(exc.errors())))


@v2.exception_handler(Exception)
async def _bug(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error (a bug) in request %s: %s", getattr(request.state, "request_id", None), exc)
    return oip_error(ApiError(500, "internal_error", "unexpected server error; it has been logged"))


class InferenceProtocol:
    """What the /v2 endpoints do, for the served ``model``; ``runner_ready`` asks the model runner's readiness."""

    def __init__(
        self,
        model: ModelDescription,
        settings: ServiceSettings,
        predictor: Predictor,
        feedback: Feedback,
        runner_ready: Callable[[], Awaitable[bool]],
    ) -> None:
        self.model, self.settings, self.predictor, self.feedback = model, settings, predictor, feedback
        self.name, _, self.version = model.tag.partition(":")
        self.runner_ready = runner_ready

    def server_metadata(self, request: Request) -> dict[str, Any]:
        check_api_key(self.settings.api_key, request.headers)
        return {"name": "transfer-serve", "version": __version__, "extensions": list(oip.EXTENSIONS)}

    async def server_ready(self) -> Response:
        if not await self.runner_ready():
            raise ApiError(503, "not_ready", "the model is not ready yet")
        return Response(status_code=200)

    def model_metadata(self, request: Request, name: str, version: str | None) -> dict[str, Any]:
        check_api_key(self.settings.api_key, request.headers)
        self._check_model(name, version)
        return oip.model_metadata(self.name, self.version, self.model.contract)

    async def model_ready(self, request: Request, name: str, version: str | None) -> Response:
        check_api_key(self.settings.api_key, request.headers)
        self._check_model(name, version)
        return await self.server_ready()

    async def infer(self, request: Request, name: str, version: str | None) -> Response:
        """POST /v2/models/{name}[/versions/{version}]/infer: classify the request's images."""
        check_api_key(self.settings.api_key, request.headers)
        self._check_model(name, version)
        self.predictor.refuse_if_full()  # before reading what may be megabytes
        body = await read_body(request, self.settings.max_body_bytes)
        call = oip.parse_request(
            body, request.headers.get(oip.HEADER_LENGTH), self.model.contract, self.settings.max_images
        )
        uploads = [Upload(None, data) for data in call.images]
        outputs, predictions = await self.predictor.classify_with_outputs(uploads, None, many=True)
        self.feedback.remember(request.state.request_id, uploads, predictions)
        content, headers = oip.encode_response(
            call, outputs, predictions, name=self.name, version=self.version, contract=self.model.contract
        )
        return Response(content, headers=headers)

    def _check_model(self, name: str, version: str | None) -> None:
        if name != self.name or version not in (None, self.version):
            asked = name if version is None else f"{name} version {version}"
            raise ApiError(
                404, "unknown_model", f"no model {asked!r} here; this server serves {self.name} version {self.version}"
            )
