"""The Open Inference Protocol's HTTP endpoints under /v2 (service/http/oip.py has its bodies), beside /v1.

Its inference goes through the same Predictor as /v1 (admission control, decoding limits, batching, metrics),
the same API key, and the same request ids and feedback memory: a /v2 answer's X-Request-ID can be given to
/v1/feedback. Errors take the protocol's shape, ``{"error": message}``, with the status /v1 would answer. The
health endpoints need no key, as /livez and /readyz do not.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response

from classifier import __version__
from classifier.store import ModelDescription
from service.feedback import Feedback
from service.http import oip
from service.http.app import handle_errors
from service.http.errors import ApiError
from service.http.uploads import Upload, read_body
from service.predictor import Predictor
from service.settings import ServiceSettings

v2 = FastAPI(title="Open Inference Protocol", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)


def oip_error(exc: ApiError) -> dict[str, str]:
    """The protocol's error shape; a bad image's index leads the message."""
    where = f"image {exc.index}: " if exc.index is not None else ""
    return {"error": where + exc.message}


# Health and readiness need no API key (orchestrators probe them); metadata and inference do.
_OPEN = re.compile(r"/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready")


def open_without_key(path: str) -> bool:
    """Whether ``path`` is one of /v2's health or readiness routes (a model named "ready" gets no pass)."""
    return _OPEN.fullmatch(path) is not None


handle_errors(v2, oip_error, open_without_key)


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

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "transfer-serve", "version": __version__, "extensions": list(oip.EXTENSIONS)}

    async def server_ready(self) -> Response:
        """200 once the model runner is ready; else 400, the protocol's "false" (a 4xx, as Triton answers)."""
        if not await self.runner_ready():
            raise ApiError(400, "not_ready", "the model is not ready yet")
        return Response(status_code=200)

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        self._check_model(name, version)
        return oip.model_metadata(self.name, self.version, self.model.contract)

    async def model_ready(self, name: str, version: str | None) -> Response:
        self._check_model(name, version)
        return await self.server_ready()

    async def infer(self, request: Request, name: str, version: str | None) -> Response:
        """POST /v2/models/{name}[/versions/{version}]/infer: classify the request's images."""
        self._check_model(name, version)
        with self.predictor.receiving(request.headers):  # before reading what may be megabytes
            body = await read_body(request, self.settings.max_body_bytes)
            length, limit = request.headers.get(oip.HEADER_LENGTH), self.settings.max_images
            # In a thread: decoding megabytes of base64 must not hold up the event loop, and so /v1, meanwhile.
            call = await anyio.to_thread.run_sync(lambda: oip.parse_request(body, length, self.model.contract, limit))
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
