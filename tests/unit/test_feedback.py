"""Feedback without a server: the recent-answer memory, the folder's bounds and safety, and the 4xx of bad feedback."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from PIL import Image

from classifier.store import ModelDescription
from service.feedback import Feedback, RecentAnswers
from service.feedback_folder import INCOMING, LOG_FILE, ConflictingLabel, FeedbackFolder, FolderFull
from service.http.errors import ApiError
from service.http.schemas import ClassScore, Prediction
from service.http.uploads import Upload
from service.metrics import metrics
from service.settings import ServiceSettings


def _jpeg(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 80, 160)).save(out, format="JPEG")
    return out.getvalue()


def test_recent_answers_are_bounded_in_requests_and_bytes():
    recent = RecentAnswers(max_requests=3, max_bytes=250)
    for i in range(4):
        recent.remember(f"r{i}", [_answer("ants"), _answer("bees")], [b"x" * 60, b"y" * 40])
    with pytest.raises(KeyError):
        recent.get("r0", 0)  # the oldest request is forgotten
    assert recent.get("r1", 1).label == "bees"
    assert recent.get("r1", 0).data is None  # its images were dropped to stay within the bytes
    assert recent.get("r3", 0).data == b"x" * 60 and recent.bytes <= 250
    with pytest.raises(IndexError):
        recent.get("r3", 2)


def test_a_request_over_the_byte_budget_keeps_its_answers_only():
    recent = RecentAnswers(max_requests=10, max_bytes=10)
    recent.remember("big", [_answer("ants")], [b"z" * 11])
    assert recent.get("big", 0).data is None and recent.get("big", 0).label == "ants" and recent.bytes == 0
    recent.remember("big", [_answer("bees")], None)  # an id sent again replaces the earlier request's answers
    assert recent.get("big", 0).label == "bees"


def test_folder_writes_each_image_once_atomically_and_logs_it(tmp_path):
    folder = FeedbackFolder(tmp_path / "fb", ("ants", "bees"), max_images=10, max_bytes=10**6)
    image = _jpeg(10)
    first = folder.store(image, "bees", "JPEG", {"request_id": "r1"})
    again = folder.store(image, "bees", "JPEG", {"request_id": "r2"})
    assert first.new and not again.new and first.name == again.name and first.name.endswith(".jpg")
    assert (tmp_path / "fb" / "bees" / first.name).read_bytes() == image
    assert folder.images == 1 and folder.bytes == len(image)
    assert not list((tmp_path / "fb" / INCOMING).iterdir())
    (line,) = (tmp_path / "fb" / LOG_FILE).read_text().splitlines()
    assert json.loads(line)["file"] == f"bees/{first.name}" and json.loads(line)["request_id"] == "r1"
    reopened = FeedbackFolder(tmp_path / "fb", ("ants", "bees"), max_images=10, max_bytes=10**6)
    assert (reopened.images, reopened.bytes) == (1, len(image))  # counted again at start-up


@pytest.mark.parametrize(("max_images", "max_bytes"), [(1, 10**6), (10, 1000)])
def test_a_full_folder_refuses_and_writes_nothing(tmp_path, max_images, max_bytes):
    folder = FeedbackFolder(tmp_path, ("ants", "bees"), max_images=max_images, max_bytes=max_bytes)
    folder.store(_jpeg(10), "ants", "JPEG", {})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(FolderFull, match="full"):
        folder.store(_jpeg(200), "bees", "JPEG", {})
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_class_names_that_could_escape_the_folder_are_refused(tmp_path):
    with pytest.raises(ValueError, match="folder name"):
        FeedbackFolder(tmp_path, ("ants", "../bees"), max_images=1, max_bytes=1024)


def _feedback(contract, tmp_path, **env) -> Feedback:
    model = ModelDescription("m:1", contract, {"test_metrics": {"accuracy": 0.9}}, "", {})
    settings = ServiceSettings.from_env({f"CLASSIFIER_{k.upper()}": str(v) for k, v in env.items()})
    return Feedback(model, settings)


def _answer(label: str, top: str | None = None) -> Prediction:
    """An answer with ``label``; ``top``: its most probable class when it differs (an abstained answer)."""
    return Prediction(label=label, probability=0.8, top_k=[ClassScore(label=top or label, probability=0.8)])


def _error(coro) -> ApiError:
    with pytest.raises(ApiError) as caught:
        asyncio.run(coro)
    return caught.value


def test_feedback_by_request_id_scores_the_answer_and_keeps_the_image(contract, tmp_path):
    feedback = _feedback(contract, tmp_path, feedback_dir=tmp_path / "fb")
    image = _jpeg(30)
    feedback.remember("req-1", [Upload("a.jpg", image), Upload("b.jpg", _jpeg(90))], [_answer("ants"), _answer("bees")])
    wrong = metrics().feedback.labels("bees", "wrong")
    before = wrong._value.get()
    result = asyncio.run(feedback.on_answer("req-1", 0, "bees"))
    assert (result.answered, result.correct, result.index) == ("ants", False, 0)
    assert (tmp_path / "fb" / result.stored).read_bytes() == image
    assert wrong._value.get() == before + 1
    assert _error(feedback.on_answer("req-1", 0, "bees")).status == 409  # once per image
    assert asyncio.run(feedback.on_answer("req-1", 1, "bees")).correct is True


@pytest.mark.parametrize(
    ("call", "status", "reason"),
    [
        (lambda f: f.on_answer("nobody", 0, "ants"), 404, "unknown_request_id"),
        (lambda f: f.on_answer("req-1", 5, "ants"), 400, "bad_index"),
        (lambda f: f.on_answer("req-1", 0, "wasps"), 400, "unknown_label"),
        (lambda f: f.on_image(Upload("x.jpg", _jpeg(1)), "wasps"), 400, "unknown_label"),
        (lambda f: f.on_image(Upload("../../x.jpg", _jpeg(1)), "ants"), 400, "bad_filename"),
        (lambda f: f.on_image(Upload("..", _jpeg(1)), "ants"), 400, "bad_filename"),
        (lambda f: f.on_image(Upload("a\\b.jpg", _jpeg(1)), "ants"), 400, "bad_filename"),
        (lambda f: f.on_image(Upload("x.jpg", b"not an image"), "ants"), 400, "not_an_image"),
    ],
)
def test_bad_feedback_gets_its_4xx_and_writes_nothing(contract, tmp_path, call, status, reason):
    feedback = _feedback(contract, tmp_path, feedback_dir=tmp_path / "fb")
    feedback.remember("req-1", [Upload("a.jpg", _jpeg(30))], [_answer("ants")])
    error = _error(call(feedback))
    assert (error.status, error.reason) == (status, reason)
    assert not [p for p in (tmp_path / "fb").rglob("*") if p.is_file()]


def test_full_folder_refuses_feedback_without_counting_it(contract, tmp_path):
    feedback = _feedback(contract, tmp_path, feedback_dir=tmp_path / "fb", feedback_max_images=1)
    asyncio.run(feedback.on_image(Upload("one.jpg", _jpeg(1)), "ants"))
    feedback.remember("req-1", [Upload("a.jpg", _jpeg(2))], [_answer("ants")])
    wrong = metrics().feedback.labels("bees", "wrong")
    before = wrong._value.get()
    error = _error(feedback.on_answer("req-1", 0, "bees"))
    assert (error.status, error.reason) == (409, "feedback_full")
    assert wrong._value.get() == before and not feedback.recent.get("req-1", 0).has_feedback  # can be sent again


def test_an_image_sent_again_with_its_label_is_kept_and_counted_once(contract, tmp_path):
    feedback = _feedback(contract, tmp_path, feedback_dir=tmp_path / "fb")
    counted = metrics().feedback.labels("ants", "image")
    before = counted._value.get()
    first = asyncio.run(feedback.on_image(Upload("one.jpg", _jpeg(7)), "ants"))
    again = asyncio.run(feedback.on_image(Upload("retry.jpg", _jpeg(7)), "ants"))  # a client's retry
    assert first.stored == again.stored and feedback.folder is not None and feedback.folder.images == 1
    assert counted._value.get() == before + 1


def test_without_a_folder_answers_are_scored_but_images_are_refused(contract, tmp_path):
    feedback = _feedback(contract, tmp_path)
    feedback.remember("req-1", [Upload("a.jpg", _jpeg(2))], [_answer("ants")])
    assert feedback.recent.get("req-1", 0).data is None  # nothing to write it to: not kept in memory either
    assert asyncio.run(feedback.on_answer("req-1", 0, "ants")).stored is None
    error = _error(feedback.on_image(Upload("x.jpg", _jpeg(1)), "ants"))
    assert (error.status, error.reason) == (409, "feedback_not_kept")


def test_an_abstained_answer_is_scored_by_its_most_probable_class(contract, tmp_path):
    feedback = _feedback(contract, tmp_path)
    feedback.remember("req-1", [Upload("a.jpg", _jpeg(2))], [_answer("unknown", top="bees")])
    result = asyncio.run(feedback.on_answer("req-1", 0, "bees"))
    assert (result.answered, result.correct) == ("unknown", True)  # as the test accuracy counted it


def test_simultaneous_feedback_on_one_answer_counts_once(contract, tmp_path):
    feedback = _feedback(contract, tmp_path, feedback_dir=tmp_path / "fb")
    feedback.remember("req-1", [Upload("a.jpg", _jpeg(2))], [_answer("ants")])

    async def both():
        return await asyncio.gather(*(feedback.on_answer("req-1", 0, "bees") for _ in range(2)), return_exceptions=True)

    outcomes = asyncio.run(both())
    assert sum(isinstance(o, ApiError) and o.reason == "duplicate_feedback" for o in outcomes) == 1
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1


def test_the_same_image_under_two_labels_is_refused(tmp_path):
    folder = FeedbackFolder(tmp_path, ("ants", "bees"), max_images=10, max_bytes=10**6)
    folder.store(_jpeg(5), "ants", "JPEG", {})
    with pytest.raises(ConflictingLabel, match="already kept as 'ants'"):
        folder.store(_jpeg(5), "bees", "JPEG", {})
    assert not (tmp_path / "bees").exists() and folder.images == 1


def test_stored_files_are_readable_by_others(tmp_path):
    folder = FeedbackFolder(tmp_path, ("ants", "bees"), max_images=10, max_bytes=10**6)
    stored = folder.store(_jpeg(5), "ants", "JPEG", {})
    assert (tmp_path / "ants" / stored.name).stat().st_mode & 0o777 == 0o644
