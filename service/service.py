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
import time
from collections.abc import Callable
from typing import Any, TypeVar

import bentoml
import numpy as np
from fastapi import Query, Request
from fastapi.responses import Response

from classifier.device import cpu_threads
from classifier.engines import ENGINES, agreement_caveat, make_engine
from classifier.jpeg_batch import JpegResult, classify_jpegs
from service import startup, transport
from service.bentoml_compat import (
    adapt_middlewares,
    described_service,
    endpoints_on_the_loop,
    runner_ready,
    service_workers_alive,
)
from service.call_cpu import CallCpu
from service.explainer import Explained, Explainer, ExplainGate, explain_answer, target_index
from service.feedback import Feedback
from service.http.app import (
    DESCRIPTION,
    ERRORS,
    EXPLAIN_RESPONSES,
    FEEDBACK_BODY,
    FEEDBACK_ERRORS,
    MANY_IMAGES_BODY,
    ONE_IMAGE_BODY,
    TITLE,
    api,
)
from service.http.oip_app import InferenceProtocol, v2
from service.http.schemas import (
    Batching,
    BatchPredictResponse,
    ExplainResponse,
    FeedbackRequest,
    FeedbackResponse,
    Limits,
    ModelInfo,
    PredictResponse,
)
from service.http.uploads import image_and_label, many_images, media_type, read_json, single_image
from service.memory import start_trimming
from service.metrics import metrics
from service.postprocessing import default_top_k, to_prediction
from service.predictor import Predictor, call_model
from service.settings import ServiceSettings
from service.shutdown import on_sigterm
from service.startup import PINNED_ENV, decide, engine_choice_info, reported_choice, settings_or_exit

logger = logging.getLogger("service")
FRONT = "image_classifier"  # the public service's name
T = TypeVar("T")


# BentoML fixes batching parameters and worker counts in the decorators, so they are read when the
# server loads this module at start-up; everything else is read in the services' __init__.
_BATCHING = settings_or_exit()
adapt_middlewares()  # before BentoML builds the apps (it checks BentoML's tracing settings then)


@bentoml.service(name="model_runner", workers=_BATCHING.model_workers, traffic={"timeout": 120})
class ModelRunner:
    """Runs the model on batches formed by BentoML across all concurrent requests."""

    @bentoml.on_deployment
    def preflight() -> None:
        """Served alone (not behind ImageClassifier, whose hook has pinned the decision): check and pin here."""
        if PINNED_ENV not in os.environ:
            startup.preflight()

    def __init__(self) -> None:
        self.ready = False
        logging.getLogger("service").setLevel(logging.INFO)  # BentoML leaves other loggers at WARNING
        transport.install()
        settings = ServiceSettings.from_env()
        serving = decide(settings)  # pinned by preflight: nothing left to choose
        model, device = serving.model, serving.device
        self.contract, self.device = model.contract, device
        threads = cpu_threads(settings.inference_threads, workers=settings.model_workers)
        if settings.jpeg_decode == "engine":  # batched JPEG decoding's resizes, in torch even next to an ONNX engine
            import torch

            torch.set_num_threads(threads)
        self.engine = make_engine(
            model,
            serving.engine,
            device,
            threads=threads,
            compile_max_batch=_BATCHING.max_batch_size if settings.compile else 0,
            cache_dir=settings.cache_folder,
        )
        if caveat := agreement_caveat(model, self.engine.name):
            logger.warning(caveat)
        self.explainer = Explainer(model.tag, model.contract, settings)
        self.engine.warm_up()
        self.call_cpu = CallCpu(metrics().inference_cpu_seconds.inc)  # the engine's CPU, for /metrics
        start_trimming(settings.malloc_trim_s)
        # On SIGTERM keep serving while a front worker lives: its queued requests still need the model.
        on_sigterm(settings.graceful_timeout_s, wait_while=service_workers_alive(FRONT))
        metrics().model_info.labels(model.tag, model.contract.backbone, self.engine.device, self.engine.name).set(1)
        self.ready = True
        logger.info("model %s ready: %s engine on %s", model.tag, self.engine.name, device)

    def __is_ready__(self) -> bool:
        return self.ready

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=_BATCHING.max_batch_size, max_latency_ms=_BATCHING.max_latency_ms
    )
    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, S, S] -> the graph's output [N, contract.output_width] (probabilities, OOD score)."""
        return self._timed(lambda: self.engine.predict(images), len(images))

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=_BATCHING.max_batch_size, max_latency_ms=_BATCHING.max_latency_ms
    )
    def infer_jpeg(self, images: list[bytes]) -> list[JpegResult]:
        """Plain JPEG bytes (see jpeg_batch.batch_decodable), decoded as one batch on the model's device -> one
        result per image: its scores, or why it could not be decoded."""
        return self._timed(lambda: classify_jpegs(images, self.contract, self.device, self.engine.predict), len(images))

    @bentoml.api
    async def explain(self, image: bytes, target: int = -1) -> Explained:
        """One image -> its Grad-CAM explanation for class ``target`` (-1: the most probable), or why there is none."""
        return await self.explainer.explain(image, None if target < 0 else target)

    def _timed(self, run: Callable[[], T], images: int) -> T:
        start = time.perf_counter()
        with self.call_cpu.measure():
            probs = run()
        m = metrics()
        m.inference_seconds.observe(time.perf_counter() - start)
        m.batch_images.observe(images)
        return probs


@bentoml.service(name=FRONT, workers=1, traffic={"timeout": 120}, service_class=described_service(TITLE, DESCRIPTION))
@bentoml.asgi_app(api, path="/v1")
@bentoml.asgi_app(v2, path="/")  # its routes all start with /v2; BentoML's own routes are matched first
class ImageClassifier:
    """Public endpoints under /v1 and the Open Inference Protocol's under /v2; BentoML adds /livez, /readyz,
    /metrics, / and /docs.json."""

    runner = bentoml.depends(ModelRunner)

    @bentoml.on_deployment
    def preflight() -> None:
        # Here, not only on ModelRunner: BentoML runs the entry service's hook before it makes any worker's
        # environment, a dependency's only after making that dependency's, which would then lack the pin.
        startup.preflight()

    def __init__(self) -> None:
        logging.getLogger("service").setLevel(logging.INFO)  # BentoML leaves other loggers at WARNING
        transport.install()  # before the first call to the runner
        self.settings = ServiceSettings.from_env()
        serving = decide(self.settings)  # pinned by preflight: the runner's choice
        self.model, device, self.engine = serving.model, serving.device, serving.engine
        self.engine_choice = engine_choice_info(reported_choice())
        self.device = device.type
        choice = self.settings.jpeg_decode
        on_device = device.type == "cuda" and ENGINES[self.engine].takes_device_tensors
        engine_decodes = choice == "engine" or (choice == "auto" and on_device)
        on_sigterm(self.settings.graceful_timeout_s)
        start_trimming(self.settings.malloc_trim_s)
        endpoints_on_the_loop(api, v2)
        for app in (api, v2):
            app.state.body_timeout_s = self.settings.body_timeout_s  # read_body's
            app.state.api_key = self.settings.api_key  # RequireApiKey's
        # The runner's client exists only once the server's event loop runs: look it up on each call.
        self.predictor = Predictor(
            self.model,
            self.settings,
            lambda batch: self.runner.to_async.infer(batch),
            lambda datas: self.runner.to_async.infer_jpeg(datas),
            engine_decodes=engine_decodes,
            device=device.type,
        )
        self.feedback_loop = Feedback(self.model, self.settings)
        self.explain_gate = ExplainGate(self.settings)
        self.oip = InferenceProtocol(
            self.model, self.settings, self.predictor, self.feedback_loop, lambda: runner_ready(self.runner)
        )
        metrics()

    @api.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=ONE_IMAGE_BODY)
    async def predict(self, request: Request, top_k: int | None = Query(None, ge=1)) -> PredictResponse:
        """Classify one image: a multipart file in field `image`, or the raw body with an image/* type."""
        with self.predictor.receiving(request.headers):  # before reading what may be megabytes
            upload = await single_image(request, max_bytes=self.settings.max_body_bytes)
            (result,) = await self.predictor.classify([upload], top_k, many=False)
        request_id = request.state.request_id
        self.feedback_loop.remember(request_id, [upload], [result])
        return PredictResponse(model=self.model.tag, request_id=request_id, **result.model_dump())

    @api.post("/predict/batch", response_model=BatchPredictResponse, responses=ERRORS, openapi_extra=MANY_IMAGES_BODY)
    async def predict_batch(self, request: Request, top_k: int | None = Query(None, ge=1)) -> BatchPredictResponse:
        """Classify several images (multipart files in field `images`); results in the order sent."""
        with self.predictor.receiving(request.headers):
            uploads = await many_images(
                request, max_bytes=self.settings.max_body_bytes, max_images=self.settings.max_images
            )
            results = await self.predictor.classify(uploads, top_k, many=True)
        request_id = request.state.request_id
        self.feedback_loop.remember(request_id, uploads, results)
        return BatchPredictResponse(model=self.model.tag, request_id=request_id, results=results)

    @api.post("/explain", response_model=ExplainResponse, responses=EXPLAIN_RESPONSES, openapi_extra=ONE_IMAGE_BODY)
    async def explain(
        self, request: Request, top_k: int | None = Query(None, ge=1), target: str | None = Query(None)
    ) -> ExplainResponse | Response:
        """One image (as /v1/predict): its prediction and a Grad-CAM heatmap of why; PNG with Accept: image/png."""
        contract, start = self.model.contract, time.perf_counter()
        index = target_index(contract, target)
        async with self.explain_gate.enter():  # before reading what may be megabytes
            upload = await single_image(request, max_bytes=self.settings.max_body_bytes)
            explained = await call_model(lambda: self.runner.to_async.explain(upload.data, index))
        explained.raise_for_error(upload.filename)
        metrics().explain_seconds.observe(time.perf_counter() - start)
        k = top_k or default_top_k(contract.num_classes)
        result = to_prediction(np.array(explained.scores), contract, k, upload.filename, self.settings.unknown)
        request_id = request.state.request_id
        self.feedback_loop.remember(request_id, [upload], [result])
        return explain_answer(
            explained,
            result,
            target=contract.class_names[explained.target],
            tag=self.model.tag,
            request_id=request_id,
            accept=request.headers.get("accept", ""),
        )

    @api.post("/feedback", response_model=FeedbackResponse, responses=FEEDBACK_ERRORS, openapi_extra=FEEDBACK_BODY)
    async def feedback(self, request: Request) -> FeedbackResponse:
        """The true label of an answer (JSON: request_id, index, label) or of an image (multipart: image, label)."""
        max_bytes = self.settings.max_body_bytes
        with self.predictor.receiving(request.headers):  # its images count against the body budget too
            if media_type(request) == "application/json":
                body = await read_json(request, FeedbackRequest, max_bytes=max_bytes)
                return await self.feedback_loop.on_answer(body.request_id, body.index, body.label)
            upload, label = await image_and_label(request, max_bytes=max_bytes)
            return await self.feedback_loop.on_image(upload, label)

    @api.get("/model", response_model=ModelInfo)
    async def model_info(self) -> ModelInfo:
        """The served model: tag, classes, contract, device, training metrics, batching and limits."""
        s, contract = self.settings, self.model.contract
        return ModelInfo(
            tag=self.model.tag,
            class_names=list(contract.class_names),
            backbone=contract.backbone,
            contract=contract,
            device=self.device,
            engine=self.engine,
            engine_choice=self.engine_choice,
            training_metrics=self.model.metadata.get("test_metrics", {}),
            calibration=self.model.metadata.get("calibration", {}),
            ood=self.model.metadata.get("ood", {}),
            unknown=s.unknown,
            batching=Batching(max_batch_size=_BATCHING.max_batch_size, max_latency_ms=_BATCHING.max_latency_ms),
            limits=Limits(max_body_bytes=s.max_body_bytes, max_pixels=s.max_pixels, max_images=s.max_images),
        )

    # The Open Inference Protocol (service/http/oip_app.py).

    @v2.get("/v2")
    async def oip_server(self) -> dict[str, Any]:
        """Server metadata: name, version, extensions."""
        return self.oip.server_metadata()

    @v2.get("/v2/health/live")
    async def oip_live(self) -> Response:
        return Response(status_code=200)

    @v2.get("/v2/health/ready")
    async def oip_ready(self) -> Response:
        return await self.oip.server_ready()

    @v2.get("/v2/models/{name}")
    @v2.get("/v2/models/{name}/versions/{version}")
    async def oip_model(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Model metadata: its input (BYTES, the encoded images) and outputs."""
        return self.oip.model_metadata(name, version)

    @v2.get("/v2/models/{name}/ready")
    @v2.get("/v2/models/{name}/versions/{version}/ready")
    async def oip_model_ready(self, name: str, version: str | None = None) -> Response:
        return await self.oip.model_ready(name, version)

    @v2.post("/v2/models/{name}/infer")
    @v2.post("/v2/models/{name}/versions/{version}/infer")
    async def oip_infer(self, request: Request, name: str, version: str | None = None) -> Response:
        """Classify the images of input "image" (BYTES: base64 strings in JSON, or the binary-data extension)."""
        return await self.oip.infer(request, name, version)
