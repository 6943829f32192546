"""From validated uploads to predictions: decode, infer, and one result per upload in the order sent.

Each image is decoded in the front (Pillow, in worker threads, at most CLASSIFIER_DECODE_CONCURRENCY at
once) or, for plain JPEGs when the model service decodes them (on its GPU), sent there undecoded. Concurrent
requests share both the decoding threads and the calls to the model service (service/coalescing.py): what
arrives while they are busy goes together, so the costs per call (a thread hand-off, an HTTP request to the
model service) are paid per group, not per image.
A JPEG the batch decoder rejects (a JpegResult with an error) is decoded here after all. A bad image
is a 400 naming the first bad file in the order sent; the model service's failures are 503s with
Retry-After. Every request first passes the admission gate (service/admission.py), which sheds load
beyond the configured limits.
The model service's methods are passed in, so all of this runs without a server in the unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import anyio
import numpy as np

from classifier.imaging import InputError
from classifier.jpeg_batch import JpegResult, batch_decodable
from classifier.preprocessing import prepare_image
from classifier.store import ModelDescription
from service.admission import Admission, BodyBudget, Overloaded
from service.bentoml_compat import runner_failure
from service.coalescing import Coalescer
from service.http.errors import ApiError
from service.http.schemas import Prediction
from service.http.uploads import Upload, byte_count
from service.metrics import metrics
from service.monitoring import Monitor
from service.postprocessing import default_top_k, to_prediction
from service.settings import ServiceSettings

logger = logging.getLogger(__name__)

ModelCall = Callable[[Any], Awaitable[np.ndarray]]
T = TypeVar("T")


class Predictor:
    """``infer`` takes uint8 [N, 3, S, S] and returns the graph's outputs [N, contract.output_width] (probabilities,
    then the OOD score); ``infer_jpeg`` takes a list of JPEG bytes and returns a JpegResult per image.
    ``engine_decodes``: send plain JPEGs to infer_jpeg. ``device``: the model's device type ("cpu", "cuda")."""

    def __init__(
        self,
        model: ModelDescription,
        settings: ServiceSettings,
        infer: ModelCall,
        infer_jpeg: ModelCall,
        *,
        engine_decodes: bool,
        device: str,
    ) -> None:
        self.model, self.settings = model, settings
        # Concurrent requests share model calls (service/coalescing.py): one call in flight per model worker; what
        # arrives meanwhile leaves as one call when one returns. On a GPU one call more waits at the model service, so
        # a worker finishing a batch (in milliseconds) finds the next one there; on the CPU that waiting call cost
        # more than the hop it saves (docs/decisions.md).
        queue_next = device == "cuda"
        calls, images = settings.model_workers + int(queue_next), settings.max_batch_size
        self.infer = Coalescer(infer, _stacked, max_images=images, max_calls=calls)
        self.infer_jpeg = Coalescer(infer_jpeg, _concatenated, max_images=images, max_calls=calls)
        # Decoding too: one worker thread per call, at most CLASSIFIER_DECODE_CONCURRENCY at once across all requests
        # (decoded pixels take far more memory than the upload: a 130 KB PNG can be a 40 MP image); the images that
        # arrive while all are busy are shared out between the next free threads, a hand-off per group, not per image.
        self.decoders = settings.decode_concurrency or os.cpu_count() or 1
        self._threads: anyio.CapacityLimiter | None = None
        self.decode = Coalescer(
            self._decode_in_thread, _concatenated, max_images=images, max_calls=self.decoders, spread=True
        )
        self.engine_decodes = engine_decodes
        self.monitor = Monitor(model, settings.drift_window)
        m = metrics()

        def observe(admitted: int, queued: int) -> None:
            m.admitted_images.set(admitted)
            m.queued_requests.set(queued)

        self.admission = Admission(
            settings.inflight_capacity, settings.max_queue, settings.max_queue_wait_ms / 1000, observe=observe
        )
        self.bodies = BodyBudget(settings.max_inflight_body_bytes, observe=m.held_body_bytes.set)

    @contextlib.contextmanager
    def receiving(self, headers: Mapping[str, str]) -> Iterator[None]:
        """Around reading a request's body and answering it: 503 at once, before the body is read, when the
        admission queue is full or its bytes do not fit the body budget (its Content-Length, or the body
        limit when it declares none or is chunked: chunked framing overrides a Content-Length)."""
        if self.admission.full:
            raise _shed(Overloaded("queue_full", "the server is at capacity; retry shortly"))
        declared = byte_count(headers.get("content-length", ""))
        limit = self.settings.max_body_bytes
        size = min(declared, limit) if declared is not None and "transfer-encoding" not in headers else limit
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.bodies.hold(size))
            except Overloaded as exc:
                raise _shed(exc) from None
            yield

    async def classify(self, uploads: list[Upload], top_k: int | None, *, many: bool) -> list[Prediction]:
        """Predictions in the order sent; ApiError 400 for the first bad image, 503 when over capacity."""
        _, predictions = await self.classify_with_outputs(uploads, top_k, many=many)
        return predictions

    async def classify_with_outputs(
        self, uploads: list[Upload], top_k: int | None, *, many: bool
    ) -> tuple[np.ndarray, list[Prediction]]:
        """As classify, with the serving graph's outputs [N, contract.output_width] (probabilities, OOD score)."""
        try:
            async with self.admission.admit(len(uploads)):
                return await self._classify(uploads, top_k, many)
        except Overloaded as exc:
            raise _shed(exc) from None

    async def _classify(
        self, uploads: list[Upload], top_k: int | None, many: bool
    ) -> tuple[np.ndarray, list[Prediction]]:
        contract = self.model.contract
        outputs = np.zeros((len(uploads), contract.output_width), dtype=np.float32)  # probabilities, OOD score
        errors: dict[int, ApiError] = {}
        there = [
            i
            for i, u in enumerate(uploads)
            if self.engine_decodes and batch_decodable(u.data, self.settings.max_pixels)
        ]
        here = sorted(set(range(len(uploads))) - set(there))
        _, retry = await _all_or_none(
            self._decode_here(uploads, here, outputs, errors, many), self._decode_there(uploads, there, outputs)
        )
        if retry:  # decode them here after all: Pillow either manages or names the problem
            await self._decode_here(uploads, retry, outputs, errors, many)
        if errors:
            raise errors[min(errors)]  # the first bad image in the order sent
        if np.isnan(outputs).any():
            raise RuntimeError("the model returned NaN")  # a bug: answered 500 and logged
        k = top_k or default_top_k(contract.num_classes)
        unknown = self.settings.unknown
        results = [to_prediction(p, contract, k, u.filename, unknown) for p, u in zip(outputs, uploads, strict=True)]
        self.monitor.observe(results)
        return outputs, results

    async def _decode_here(
        self, uploads: list[Upload], indices: list[int], outputs: np.ndarray, errors: dict[int, ApiError], many: bool
    ) -> None:
        """Decode ``indices`` in this process, then one model call for them, unless an image is bad."""
        if not indices:
            return
        images = []
        # One job per image, so that a request's images spread over the decoding threads.
        decoded = await _all_or_none(*(self.decode([uploads[i].data]) for i in indices))
        for i, (outcome,) in zip(indices, decoded, strict=True):
            if isinstance(outcome, InputError):
                errors[i] = ApiError(
                    400, outcome.reason, outcome.message, file=uploads[i].filename, index=i if many else None
                )
            elif isinstance(outcome, Exception):
                raise outcome  # a bug, answered 500 for this request alone
            else:
                images.append(outcome)
        if not errors:  # the request fails anyway: spare the model
            outputs[indices] = await self._call(self.infer, np.stack(images))

    async def _decode_there(self, uploads: list[Upload], indices: list[int], outputs: np.ndarray) -> list[int]:
        """Send ``indices`` undecoded to the model service; the indices it could not decode."""
        if not indices:
            return []
        results: list[JpegResult] = await self._call(self.infer_jpeg, [uploads[i].data for i in indices])
        failed = []
        for i, result in zip(indices, results, strict=True):
            if result.scores is None:
                failed.append(i)
            else:
                outputs[i] = result.scores
        return failed

    async def _decode_in_thread(self, datas: list[bytes]) -> list[np.ndarray | Exception]:
        if self._threads is None:  # created in the event loop that uses it; anyio's default pool stops at 40
            self._threads = anyio.CapacityLimiter(self.decoders)
        return await anyio.to_thread.run_sync(self._prepare_all, datas, limiter=self._threads)

    def _prepare_all(self, datas: list[bytes]) -> list[np.ndarray | Exception]:
        """Decode and preprocess each image in turn: its uint8 [3, S, S], or the exception it raised (InputError
        for a bad image), so that one image's failure stays its own request's."""
        contract, max_pixels, seconds = self.model.contract, self.settings.max_pixels, metrics().preprocess_seconds
        prepared: list[np.ndarray | Exception] = []
        for data in datas:
            start = time.perf_counter()
            try:
                prepared.append(prepare_image(data, contract, max_pixels=max_pixels))
            except Exception as exc:  # noqa: BLE001 - handed to the request it belongs to
                prepared.append(exc)
            seconds.observe(time.perf_counter() - start)
        return prepared

    @staticmethod
    async def _call(method: ModelCall, batch: Any) -> Any:
        return await call_model(lambda: method(batch))


async def call_model(call: Callable[[], Awaitable[T]]) -> T:
    """One call to the model service; its failures become 503s with Retry-After."""
    try:
        return await call()
    except Exception as exc:
        failure = runner_failure(exc)
        if failure is None:
            raise
        if failure == "busy":  # BentoML's batcher: over the batching latency budget
            metrics().shed.labels("batching_budget").inc()
            raise ApiError(503, "overloaded", "the model is busy; retry shortly") from exc
        if failure == "failed":
            logger.exception("model runner failed")
            raise ApiError(503, "model_unavailable", "the model service failed; retry shortly") from exc
        logger.warning("model runner unreachable: %s", exc)
        raise ApiError(503, "model_unavailable", "the model service is not reachable; retry shortly") from exc


def _stacked(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays)


def _concatenated(lists: list[list[T]]) -> list[T]:
    return [item for items in lists for item in items]


def _shed(exc: Overloaded) -> ApiError:
    metrics().shed.labels(exc.reason).inc()
    return ApiError(503, "overloaded", exc.message)


async def _all_or_none(*coros: Awaitable[Any], return_exceptions: bool = False) -> list[Any]:
    """asyncio.gather, but if one fails (or this task is cancelled) the others are cancelled and awaited
    before the error propagates, so nothing of the request waits on after its admission slots are given back;
    a decode or model call its images already left in, shared with other requests, runs to its end (bounded by
    the coalescers' calls in flight, service/coalescing.py)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks, return_exceptions=return_exceptions)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
