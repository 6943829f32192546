"""The BentoML services: endpoints only. Decoding, preprocessing, inference and metrics live in their modules.

Two services in one server (``bentoml serve service.service:ImageClassifier``):
- ImageClassifier, the public front: parses and validates each upload and decodes it in a
  thread, so a bad image gets its own 4xx before anything is batched;
- ModelRunner, reached through ``bentoml.depends``: BentoML's adaptive batching across all
  clients, then one forward pass per batch. BentoML connects the two over a Unix socket in a
  private temporary folder, so the runner is not reachable from the network; what passes between
  them is encoded by service/transport.py (arrays and bytes, never pickle).
"""

from __future__ import annotations

import logging
import os
import sys
import time

import bentoml
import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from classifier import __version__
from service import transport
from service.bentoml_compat import check_version, described_service
from service.auth import CHALLENGE, check_api_key
from service.classify import Classifier
from service.contract import ContractError
from service.engine import choose_engine, cpu_threads, int8_caveat, make_engine, pick_device
from service.jpeg_batch import decode_batch, mark_failed
from service.metrics import metrics
from service.model_store import describe_model
from service.schemas import Batching, BatchPredictResponse, ErrorResponse, Limits, ModelInfo, PredictResponse
from service.settings import ServiceSettings, SettingsError
from service.shutdown import on_sigterm, service_workers_alive
from service.uploads import ApiError, many_images, single_image

logger = logging.getLogger("service")
FRONT = "image_classifier"  # the public service's name


def _settings_or_exit() -> ServiceSettings:
    """Settings, or one line on stderr and exit code 2: a misconfigured server must not start."""
    try:
        return ServiceSettings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# BentoML fixes batching parameters and worker counts in the decorators, so they are read when the
# server loads this module at start-up; everything else is read in the services' __init__.
_BATCHING = _settings_or_exit()


@bentoml.service(name="model_runner", workers=_BATCHING.model_workers, traffic={"timeout": 120})
class ModelRunner:
    """Runs the model on batches formed by BentoML across all concurrent requests."""

    @bentoml.on_deployment
    def preflight() -> None:
        """Once, before any worker starts: an unusable model stops the server with one line."""
        settings = _settings_or_exit()
        check_version()
        try:
            model = describe_model(settings.model_tag)
            device = pick_device(settings.device)
            engine = choose_engine(settings.engine, device, model.engines)
            if engine != "torch":  # a corrupt or foreign graph stops the server here, not in a worker
                make_engine(model, engine, device, threads=1)
        except (ContractError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        # Pin the version ("name:latest" -> "name:abc123") for every worker this server starts, so the
        # front and the runner (also a restarted one) use the same model even if a newer one lands.
        os.environ["CLASSIFIER_MODEL_TAG"] = model.tag
        if "BENTOML_NO_UDS" in os.environ:
            logger.warning("BENTOML_NO_UDS is set: the model runner listens on 127.0.0.1 TCP, where any local "
                           "user can send it images to classify")

    def __init__(self) -> None:
        self.ready = False
        logging.getLogger("service").setLevel(logging.INFO)  # BentoML leaves other loggers at WARNING
        transport.install()
        settings = ServiceSettings.from_env()
        model = describe_model(settings.model_tag)
        device = pick_device(settings.device)
        self.contract, self.device = model.contract, device
        threads = cpu_threads(settings.inference_threads, workers=settings.model_workers)
        torch.set_num_threads(threads)  # also for the resizes of batched JPEG decoding next to an ONNX engine
        self.engine = make_engine(
            model, choose_engine(settings.engine, device, model.engines), device, threads=threads,
            compile_max_batch=_BATCHING.max_batch_size if settings.compile else 0,
        )
        if self.engine.name == "onnx-int8" and (caveat := int8_caveat(model)):
            logger.warning(caveat)
        self.engine.warm_up()
        # On SIGTERM keep serving while a front worker lives: its queued requests still need the model.
        on_sigterm(settings.graceful_timeout_s, wait_while=service_workers_alive(FRONT))
        metrics().model_info.labels(model.tag, model.contract.backbone, self.engine.device, self.engine.name).set(1)
        self.ready = True
        logger.info("model %s ready: %s engine on %s", model.tag, self.engine.name, device)

    def __is_ready__(self) -> bool:
        return self.ready

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=_BATCHING.max_batch_size,
                 max_latency_ms=_BATCHING.max_latency_ms)
    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, S, S] -> probabilities [N, C]."""
        return self._timed(lambda: self.engine.predict(images), len(images))

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=_BATCHING.max_batch_size,
                 max_latency_ms=_BATCHING.max_latency_ms)
    def infer_jpeg(self, images: list[bytes]) -> np.ndarray:
        """Plain JPEG bytes (see jpeg_batch.batch_decodable) -> probabilities [N, C], decoded as one batch on
        the model's device; NaN rows for images that turn out corrupt."""
        def run() -> np.ndarray:
            batch, failed = decode_batch(images, self.contract, self.device)
            return mark_failed(self.engine.predict(batch), failed)

        return self._timed(run, len(images))

    def _timed(self, run, images: int) -> np.ndarray:
        start = time.perf_counter()
        probs = run()
        m = metrics()
        m.inference_seconds.observe(time.perf_counter() - start)
        m.batch_images.observe(images)
        return probs


TITLE = "Image classifier"
DESCRIPTION = """Batched image classification with a transfer-learned model (transfer-serve).

- `POST /v1/predict`: one image (multipart field `image`, or a raw `image/*` body); `?top_k=N`.
- `POST /v1/predict/batch`: several images (multipart field `images`), results in the order sent.
- `GET /v1/model`: the served model's tag, classes, contract, engine, device, batching and limits.
- `GET /livez`, `GET /readyz`: health; `GET /metrics`: Prometheus metrics.
- `GET /`, `GET /docs.json`: this page and its OpenAPI document; `/v1/docs`, `/v1/openapi.json`: those of /v1 alone.

Errors are JSON, `{"error": {"reason", "message", "file", "index"}}`, with a 4xx for every bad input,
503 with `Retry-After` when overloaded. With an API key configured, /v1 needs `Authorization: Bearer <key>`."""

api = FastAPI(title=TITLE, version=__version__, description=DESCRIPTION)
_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 415, 503)}
_ONE_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}
_MANY_IMAGES_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}}}


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    if exc.status < 500:
        metrics().rejected.labels(exc.reason).inc()
    body = ErrorResponse(error={"reason": exc.reason, "message": exc.message, "file": exc.file, "index": exc.index})
    headers = {503: {"Retry-After": "1"}, 401: CHALLENGE}.get(exc.status)
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = {405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return await _api_error(request, ApiError(exc.status_code, reason, str(exc.detail)))


@api.exception_handler(Exception)
async def _bug(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error (a bug): %s", exc)
    return await _api_error(request, ApiError(500, "internal_error", "unexpected server error; it has been logged"))


@api.exception_handler(RequestValidationError)
async def _invalid_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return await _api_error(request, ApiError(400, "bad_parameter", f"{where}: {first.get('msg')}"))


@bentoml.service(name=FRONT, workers=1, traffic={"timeout": 120},
                 service_class=described_service(TITLE, DESCRIPTION))
@bentoml.asgi_app(api, path="/v1")
class ImageClassifier:
    """Public endpoints under /v1; BentoML adds /livez, /readyz, /metrics, / and /docs.json."""

    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        logging.getLogger("service").setLevel(logging.INFO)  # BentoML leaves other loggers at WARNING
        transport.install()  # before the first call to the runner
        self.settings = ServiceSettings.from_env()
        self.model = describe_model(self.settings.model_tag)
        device = pick_device(self.settings.device)
        self.device = device.type
        self.engine = choose_engine(self.settings.engine, device, self.model.engines)  # as the runner chooses
        choice = self.settings.jpeg_decode
        engine_decodes = choice == "engine" or (choice == "auto" and device.type == "cuda" and self.engine == "torch")
        torch.set_num_threads(1)  # decoding runs in threads here; leave the cores to the model runner
        on_sigterm(self.settings.graceful_timeout_s)
        # The runner's client exists only once the server's event loop runs: look it up on each call.
        self.classifier = Classifier(self.model, self.settings, lambda batch: self.runner.to_async.infer(batch),
                                     lambda datas: self.runner.to_async.infer_jpeg(datas), engine_decodes=engine_decodes)
        metrics()

    @api.post("/predict", response_model=PredictResponse, responses=_ERRORS, openapi_extra=_ONE_IMAGE_BODY)
    async def predict(self, request: Request, top_k: int | None = Query(None, ge=1)) -> PredictResponse:
        """Classify one image: a multipart file in field `image`, or the raw body with an image/* type."""
        check_api_key(self.settings.api_key, request.headers)
        self.classifier.refuse_if_full()  # before reading what may be megabytes
        upload = await single_image(request, max_bytes=self.settings.max_body_bytes)
        (result,) = await self.classifier.classify([upload], top_k, many=False)
        return PredictResponse(model=self.model.tag, **result.model_dump())

    @api.post("/predict/batch", response_model=BatchPredictResponse, responses=_ERRORS, openapi_extra=_MANY_IMAGES_BODY)
    async def predict_batch(self, request: Request, top_k: int | None = Query(None, ge=1)) -> BatchPredictResponse:
        """Classify several images (multipart files in field `images`); results in the order sent."""
        check_api_key(self.settings.api_key, request.headers)
        self.classifier.refuse_if_full()
        uploads = await many_images(request, max_bytes=self.settings.max_body_bytes, max_images=self.settings.max_images)
        return BatchPredictResponse(model=self.model.tag, results=await self.classifier.classify(uploads, top_k, many=True))

    @api.get("/model", response_model=ModelInfo)
    async def model_info(self, request: Request) -> ModelInfo:
        """The served model: tag, classes, contract, device, training metrics, batching and limits."""
        check_api_key(self.settings.api_key, request.headers)
        s, contract = self.settings, self.model.contract
        return ModelInfo(
            tag=self.model.tag, class_names=list(contract.class_names), backbone=contract.backbone, contract=contract,
            device=self.device, engine=self.engine, training_metrics=self.model.metadata.get("test_metrics", {}),
            batching=Batching(max_batch_size=_BATCHING.max_batch_size, max_latency_ms=_BATCHING.max_latency_ms),
            limits=Limits(max_body_bytes=s.max_body_bytes, max_pixels=s.max_pixels, max_images=s.max_images),
        )
