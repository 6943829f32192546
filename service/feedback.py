"""Feedback: the true label of an answer (by its request id) or of an uploaded image, counted in the live
accuracy metrics and, with CLASSIFIER_FEEDBACK_DIR, kept for retraining (service/feedback_folder.py).

The answers of the latest requests are kept in memory (bounded in count, and in bytes for their images, which
are kept only when there is a folder to write them to), so feedback by id needs no re-upload. They live in
the front worker that answered; the front runs one worker.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from PIL import Image

from classifier.imaging import FORMATS, InputError, decode_image
from classifier.store import ModelDescription
from service.feedback_folder import ConflictingLabel, FeedbackFolder, FolderFull
from service.http.errors import ApiError
from service.http.schemas import FeedbackResponse, Prediction
from service.http.uploads import Upload
from service.metrics import FEEDBACK_OUTCOMES, metrics
from service.postprocessing import class_index
from service.settings import ENV_PREFIX, ServiceSettings

logger = logging.getLogger(__name__)


@dataclass
class Answer:
    label: str  # what the service answered (the label field: "unknown" when it abstained)
    top: str  # the most probable class: what live accuracy scores, as the test accuracy did
    data: bytes | None  # the image, when kept
    has_feedback: bool = False


class RecentAnswers:
    """The answers of the last ``max_requests`` requests by request id; their images within ``max_bytes``
    (the oldest images are dropped first, their answers stay)."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self._answers: OrderedDict[str, list[Answer]] = OrderedDict()
        self.bytes = 0

    def remember(self, request_id: str, results: Sequence[Prediction], images: Sequence[bytes] | None) -> None:
        """Keep one request's answers (a request id sent again replaces the earlier request's)."""
        if self.max_requests == 0:
            return
        self._drop(request_id)
        size = sum(len(d) for d in images) if images is not None else 0
        keep = images is not None and size <= self.max_bytes
        self._answers[request_id] = [
            Answer(r.label, r.top_k[0].label, images[i] if keep and images is not None else None)
            for i, r in enumerate(results)
        ]
        self.bytes += size if keep else 0
        while len(self._answers) > self.max_requests:
            self._drop(next(iter(self._answers)))
        for answers in self._answers.values():  # oldest first
            if self.bytes <= self.max_bytes:
                break
            for answer in answers:
                if answer.data is not None:
                    self.bytes -= len(answer.data)
                    answer.data = None

    def get(self, request_id: str, index: int) -> Answer:
        """KeyError for an id not (or no longer) kept; IndexError for an index the request did not have."""
        answers = self._answers[request_id]
        if not 0 <= index < len(answers):
            raise IndexError(index)
        return answers[index]

    def _drop(self, request_id: str) -> None:
        for answer in self._answers.pop(request_id, []):
            self.bytes -= len(answer.data) if answer.data is not None else 0


class Feedback:
    """What /v1/feedback does, and what the prediction endpoints remember for it."""

    def __init__(self, model: ModelDescription, settings: ServiceSettings) -> None:
        self.class_names = model.contract.class_names
        self.max_pixels = settings.max_pixels
        self.folder = (
            FeedbackFolder(
                settings.feedback_dir,
                self.class_names,
                max_images=settings.feedback_max_images,
                max_bytes=settings.feedback_max_bytes,
            )
            if settings.feedback_dir is not None
            else None
        )
        self.recent = RecentAnswers(settings.recent_requests, settings.recent_bytes if self.folder else 0)
        self._init_metrics(model)

    def _init_metrics(self, model: ModelDescription) -> None:
        m = metrics()
        for name in self.class_names:  # a series from the start, so rates see 0 rather than nothing
            for outcome in FEEDBACK_OUTCOMES:
                m.feedback.labels(name, outcome)
        test = model.metadata.get("test_metrics") or {}
        if "accuracy" in test:
            m.training_accuracy.set(float(test["accuracy"]))
        for name, figures in (test.get("per_class") or {}).items():
            if name in self.class_names and "recall" in figures:
                m.training_class_recall.labels(name).set(float(figures["recall"]))
        if self.folder is not None:
            self._observe_folder()

    def remember(self, request_id: str, uploads: Sequence[Upload], results: Sequence[Prediction]) -> None:
        """Keep a request's answers (and its images, when they can be stored) for feedback by id."""
        images = [u.data for u in uploads] if self.folder is not None else None
        self.recent.remember(request_id, results, images)

    async def on_answer(self, request_id: str, index: int, label: str) -> FeedbackResponse:
        """The true ``label`` of image ``index`` of request ``request_id``."""
        class_index(self.class_names, label, "label")
        try:
            answer = self.recent.get(request_id, index)
        except KeyError:
            raise ApiError(
                404,
                "unknown_request_id",
                f"no recent answer has request id {request_id!r} (the service keeps the last "
                f"{self.recent.max_requests:,} requests, in memory); send the image with its label instead",
            ) from None
        except IndexError:
            raise ApiError(400, "bad_index", f"request {request_id!r} has no image at index {index}") from None
        if answer.has_feedback:
            raise ApiError(409, "duplicate_feedback", f"image {index} of request {request_id!r} already has feedback")
        answer.has_feedback = True  # before the wait below: a second feedback meanwhile is a duplicate
        stored = None
        try:
            if answer.data is not None and self.folder is not None:
                record = {"request_id": request_id, "index": index, "label": label, "answered": answer.label}
                stored, _ = await self._store(answer.data, label, _format_of(answer.data), record)
        except BaseException:
            answer.has_feedback = False  # refused (a full folder): it may be sent again
            raise
        correct = answer.top == label
        metrics().feedback.labels(label, "correct" if correct else "wrong").inc()
        return FeedbackResponse(
            label=label, request_id=request_id, index=index, answered=answer.label, correct=correct, stored=stored
        )

    async def on_image(self, upload: Upload, label: str) -> FeedbackResponse:
        """An image and its true ``label``, stored for retraining."""
        class_index(self.class_names, label, "label")
        if upload.filename is not None and _path_like(upload.filename):
            raise ApiError(400, "bad_filename", f"file name {upload.filename!r} looks like a path; send a plain name")
        if self.folder is None:
            raise ApiError(
                409,
                "feedback_not_kept",
                f"this server keeps no feedback images: set {ENV_PREFIX}FEEDBACK_DIR to a folder to collect them",
            )
        try:
            image_format = await anyio.to_thread.run_sync(self._validate, upload.data)
        except InputError as exc:
            raise ApiError(400, exc.reason, exc.message, file=upload.filename) from exc
        record = {"label": label, "filename": upload.filename}
        stored, new = await self._store(upload.data, label, image_format, record)
        if new:  # the same image sent again (a client's retry) is kept once, and counted once
            metrics().feedback.labels(label, "image").inc()
        return FeedbackResponse(label=label, stored=stored)

    def _validate(self, data: bytes) -> str:
        decode_image(data, max_pixels=self.max_pixels)
        return _format_of(data)

    async def _store(self, data: bytes, label: str, image_format: str, record: dict) -> tuple[str, bool]:
        """Write the image; its path within the folder ("class/name"), and whether it is new there (not already kept
        under this label). 409 when the folder is full."""
        assert self.folder is not None
        try:
            stored = await anyio.to_thread.run_sync(self.folder.store, data, label, image_format, record)
        except FolderFull as exc:
            raise ApiError(409, "feedback_full", str(exc)) from None
        except ConflictingLabel as exc:
            raise ApiError(409, "conflicting_label", str(exc)) from None
        self._observe_folder()
        return f"{label}/{stored.name}", stored.new

    def _observe_folder(self) -> None:
        assert self.folder is not None
        m = metrics()
        m.feedback_folder_images.set(self.folder.images)
        m.feedback_folder_fill.set(self.folder.fill)


def _format_of(data: bytes) -> str:
    """The format of image bytes that decoded already."""
    with Image.open(io.BytesIO(data), formats=FORMATS) as image:
        return image.format or ""


def _path_like(name: str) -> bool:
    return any(c in name for c in "/\\\0") or name in (".", "..") or any(ord(c) < 32 for c in name)
