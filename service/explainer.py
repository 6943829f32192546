"""POST /v1/explain: the prediction and a Grad-CAM heatmap for one image, on the PyTorch network whatever engine
serves predictions.

Explaining can never starve predictions: it runs in the model runner, one image at a time, in one thread whose
priority is lowered (CLASSIFIER_EXPLAIN_NICE), beside the engine's threads, so when predictions want the cores
the scheduler gives them first. It runs there rather than in the front because the kernel shares the CPU
between BentoML's worker processes first (each is its own session, so its own autogroup, where the host's
tasks are not in a cgroup of their own) and only then between their threads: a low-priority thread in the
front would still get the front's half. A request finding the explain thread busy and CLASSIFIER_EXPLAIN_QUEUE
requests already waiting, or waiting longer than CLASSIFIER_MAX_QUEUE_WAIT_MS, gets 503. The network is loaded
on the first explain request (about 100 MB for ResNet50), so a server that never explains never pays for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi.responses import Response
from pydantic import BaseModel

from classifier.contract import ModelContract
from classifier.imaging import InputError, decode_image
from service.admission import Admission, Overloaded
from service.http.errors import ApiError
from service.http.schemas import ExplainResponse, Prediction
from service.metrics import metrics
from service.postprocessing import class_index
from service.settings import ENV_PREFIX, ServiceSettings

if TYPE_CHECKING:
    from classifier.explain import GradCam

logger = logging.getLogger(__name__)


class Explained(BaseModel):
    """What the model runner answers the front: the explanation, or why there is none (reason and message)."""

    scores: list[float] = []  # the serving network's outputs for the image: probabilities, then the OOD score
    target: int = 0  # the class explained
    heatmap: list[list[float]] = []  # [h, w] in [0, 1]
    png: bytes = b""  # the photo with the heatmap over it
    width: int = 0  # the photo's size, upright
    height: int = 0
    reason: str | None = None  # explain_busy (a 503), or a bad image's reason (a 400)
    message: str | None = None

    def raise_for_error(self, filename: str | None) -> None:
        """The front's ApiError for an answer without an explanation."""
        if self.reason is not None:
            status = 503 if self.reason == BUSY else 400
            if status == 503:
                metrics().explain_shed.inc()
            raise ApiError(status, self.reason, self.message or "", file=None if status == 503 else filename)


BUSY = "explain_busy"
UNAVAILABLE = "explain_unavailable"


def explain_installed() -> bool:
    """Whether PyTorch and Captum are installed (found, not imported: the front never imports them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "captum"))


def explain_answer(
    explained: Explained, prediction: Prediction, *, target: str, tag: str, request_id: str, accept: str
) -> ExplainResponse | Response:
    """The endpoint's answer: the overlay as PNG when ``accept`` asks for it, else JSON."""
    if _wants_png(accept):
        headers = {"X-Explained-Class": quote(target), "X-Predicted-Class": quote(prediction.label)}
        return Response(explained.png, media_type="image/png", headers=headers)
    return ExplainResponse(
        model=tag,
        request_id=request_id,
        target=target,
        heatmap=explained.heatmap,
        width=explained.width,
        height=explained.height,
        overlay_png=base64.b64encode(explained.png).decode("ascii"),
        **prediction.model_dump(),
    )


def _wants_png(accept: str) -> bool:
    """Whether an Accept header prefers image/png to JSON (RFC 9110): each type takes the q of its most specific
    entry (image/png over image/* over */*), and on equal q a type named outright beats a wildcard. JSON on a tie,
    or with no header."""
    entries = []
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        entries.append(
            (kind.lower(), _quality(next((p.split("=", 1)[1] for p in params if p.lower().startswith("q=")), "1")))
        )
    return _preference(entries, "image/png") > _preference(entries, "application/json")


def _preference(entries: list[tuple[str, float]], media_type: str) -> tuple[float, int]:
    """(q, specificity) of ``media_type`` by its most specific entry among ``entries``; (0, -1) if refused or absent."""
    family = media_type.split("/")[0] + "/*"
    ranked = [
        (q, ("*/*", family, media_type).index(kind)) for kind, q in entries if kind in ("*/*", family, media_type)
    ]
    q, specificity = max(ranked, key=lambda entry: entry[1], default=(0.0, -1))
    return (q, specificity) if q > 0 else (0.0, -1)


def _quality(text: str) -> float:
    """An Accept entry's q: 0 to 1, and 0 for anything else (not a number, inf, nan)."""
    try:
        q = float(text)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def target_index(contract: ModelContract, target: str | None) -> int:
    """The class index of ``?target=`` (-1: the most probable class); 400 when the model has no such class."""
    return -1 if target is None else class_index(contract.class_names, target, "target")


def _busy(message: str) -> Explained:
    return Explained(reason=BUSY, message=message)


def thread_stat(text: str) -> tuple[int, int]:
    """(niceness, CPU clock ticks) of a thread from its /proc/<pid>/task/<tid>/stat line (see proc(5))."""
    fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on; the name before may hold ")"
    return int(fields[16]), int(fields[11]) + int(fields[12])


class ExplainGate:
    """In the front: explain requests in flight, at most what the model runners take (each runs one and queues
    CLASSIFIER_EXPLAIN_QUEUE), so a request beyond is refused before its body is read. The service's admission
    gate with no queue of its own: the runners queue."""

    def __init__(self, settings: ServiceSettings) -> None:
        capacity = settings.model_workers * (1 + settings.explain_queue)
        self.admission = Admission(capacity, max_queue=0, max_wait_s=settings.max_queue_wait_ms / 1000)
        self.available = explain_installed()

    @contextlib.asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        """Hold one place while the body runs; ApiError 503 when none is free, 501 where explain is not installed."""
        if not self.available:
            raise ApiError(
                501,
                UNAVAILABLE,
                "explain needs PyTorch and Captum, which this server's image leaves out (the CPU image serves "
                "without torch); run the image built with --build-arg TORCH=cpu (or cuda) for /v1/explain",
            )
        try:
            async with self.admission.admit(1):
                yield
        except Overloaded:  # only admit raises it: the body calls the runner, whose failures are ApiErrors
            metrics().explain_shed.inc()
            raise ApiError(
                503, BUSY, f"{self.admission.in_flight} explain request(s) already in flight; retry shortly"
            ) from None


class Explainer:
    """In the model runner: Grad-CAM of model ``tag`` for one image at a time, in a low-priority thread, with a
    bounded queue."""

    def __init__(self, tag: str, contract: ModelContract, settings: ServiceSettings) -> None:
        self.tag, self.contract = tag, contract
        self.max_pixels = min(settings.max_pixels, settings.explain_max_pixels)
        self.max_pending = 1 + settings.explain_queue  # the one running and those waiting
        self.max_wait_s = settings.max_queue_wait_ms / 1000
        self._pending = 0
        self._lock = threading.Lock()
        self.nice = settings.explain_nice
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="explain", initializer=self._lower_priority)
        self._own_priority = False  # whether the explain thread (and the helpers it starts) run at a niceness alone
        self._cam: GradCam | None = None

    async def explain(self, data: bytes, target: int | None) -> Explained:
        """The explanation of one image (``target`` None: the most probable class), or why there is none: busy
        when the queue is full, or when the thread has not taken it within the queue's wait."""
        with self._lock:
            if self._pending >= self.max_pending:
                return _busy(f"{self._pending} explain request(s) already running or waiting; retry shortly")
            self._pending += 1
        future = self._executor.submit(self._run, data, target)
        future.add_done_callback(self._release)  # also when cancelled before it ran
        waiting = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait({waiting}, timeout=self.max_wait_s)
        except asyncio.CancelledError:
            future.cancel()  # the caller is gone: if still queued, it need not run
            raise
        if not done and future.cancel():  # still queued: give its place up
            return _busy(f"waited over {ENV_PREFIX}MAX_QUEUE_WAIT_MS for the explain thread; retry shortly")
        try:
            return await waiting
        except InputError as exc:
            return Explained(reason=exc.reason, message=exc.message)

    def _release(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    def _run(self, data: bytes, target: int | None) -> Explained:
        """In the explain thread: decode, predict and explain, overlay."""
        from classifier.explain import encode_png, overlay
        from classifier.preprocessing import resize_and_crop

        cpu = self._cpu_seconds()
        try:
            photo = decode_image(data, max_pixels=self.max_pixels)
            explanation = self._gradcam().explain(resize_and_crop(photo, self.contract)[None], [target])
            png = encode_png(overlay(photo, explanation.heatmaps[0], self.contract))
        finally:
            metrics().explain_cpu_seconds.inc(max(0.0, self._cpu_seconds() - cpu))
        return Explained(
            scores=explanation.scores[0].tolist(),
            target=explanation.targets[0],
            heatmap=[[round(float(v), 3) for v in row] for row in explanation.heatmaps[0]],  # not float32's 0.0329999
            png=png,
            width=photo.width,
            height=photo.height,
        )

    def _gradcam(self) -> GradCam:
        if self._cam is None:  # imported and loaded on first use: a server that never explains never pays for it
            from classifier.explain import GradCam
            from classifier.store import load_model

            logger.info("loading model %s's PyTorch network for /v1/explain", self.tag)
            self._cam = GradCam(load_model(self.tag).network, self.contract)
        return self._cam

    def _lower_priority(self) -> None:
        """In the explain thread, once: lower its priority (Linux: a thread id names that thread alone); the
        threads it starts for Torch's parallel work inherit it."""
        if self.nice <= 0:
            return
        try:
            tid, pid = threading.get_native_id(), os.getpid()
            os.setpriority(os.PRIO_PROCESS, tid, max(self.nice, os.getpriority(os.PRIO_PROCESS, tid)))
            self._own_priority = (
                os.getpriority(os.PRIO_PROCESS, pid) < self.nice == os.getpriority(os.PRIO_PROCESS, tid)
            )
        except (OSError, AttributeError) as exc:  # not Linux, or not allowed: explain still runs, at equal priority
            logger.warning("cannot lower the explain thread's priority (%s): it competes with predictions", exc)

    def _cpu_seconds(self) -> float:
        """CPU time of the explain thread and the helper threads it started (those at its niceness), or of the
        explain thread alone where its niceness is not its own."""
        if not self._own_priority:
            return time.thread_time()
        ticks = 0
        for stat in Path("/proc/self/task").glob("*/stat"):
            try:
                nice, cpu = thread_stat(stat.read_text())
            except OSError:  # the thread ended meanwhile
                continue
            ticks += cpu if nice == self.nice else 0
        return ticks / os.sysconf("SC_CLK_TCK")
