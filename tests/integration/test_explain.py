"""POST /v1/explain on the real server: a heatmap of a real photo as PNG or JSON, and a busy explain that
answers 503 while predictions go on."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from loadtests.servers import serve
from loadtests.traffic import PHOTOS
from tests.conftest import ODD_IMAGES
from tests.integration.conftest import SERVER_ENV
from tests.support.prom import total

PHOTO = PHOTOS / "bee-1.jpg"  # a real 500 x 375 photo


def _explain(url: str, data: bytes, accept: str = "application/json", request_id: str = "", **params) -> httpx.Response:
    headers = {"content-type": "image/jpeg", "accept": accept, **({"x-request-id": request_id} if request_id else {})}
    return httpx.post(f"{url}/v1/explain", content=data, headers=headers, params=params, timeout=120)


def test_png_overlay_of_a_real_photo_has_the_photos_size(server):
    response = _explain(server, PHOTO.read_bytes(), accept="image/png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.format == "PNG" and overlay.size == (500, 375)
    assert response.headers["x-explained-class"] == response.headers["x-predicted-class"]
    photo = np.asarray(Image.open(PHOTO).convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(overlay.convert("RGB"), dtype=np.int16) - photo).mean() > 5  # something was drawn


def test_json_answer_carries_the_prediction_the_grid_and_the_overlay(server):
    response = _explain(server, PHOTO.read_bytes(), request_id="explain-1")
    body = response.json()
    assert response.status_code == 200, body
    assert body["target"] == body["label"] and body["label"] in ("cats", "dogs")
    grid = np.array(body["heatmap"])
    assert grid.shape == (2, 2) and grid.min() >= 0 and grid.max() <= 1  # resnet50's layer4 grid at 64 px
    assert all(len(repr(v)) <= 5 for row in body["heatmap"] for v in row)  # rounded: 0.033, not 0.032999999821
    assert (body["width"], body["height"]) == (500, 375)
    assert Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))).size == (500, 375)
    assert body["request_id"] == response.headers["x-request-id"] == "explain-1"


def test_another_class_can_be_explained_and_an_unknown_one_is_refused(server):
    other = _explain(server, PHOTO.read_bytes(), target="dogs").json()
    assert other["target"] == "dogs" and len(other["heatmap"]) == 2
    refused = _explain(server, PHOTO.read_bytes(), target="wolves")
    assert refused.status_code == 400 and refused.json()["error"]["reason"] == "unknown_label"


def test_the_overlay_is_upright_and_bad_images_get_4xx(server):
    rotated = ODD_IMAGES / "hopper_orientation_6.jpg"  # stored landscape, shown portrait by its EXIF tag
    upright = ImageOps.exif_transpose(Image.open(rotated)).size
    response = _explain(server, rotated.read_bytes(), accept="image/png")
    assert Image.open(io.BytesIO(response.content)).size == upright
    bad = _explain(server, b"not an image at all")
    assert bad.status_code == 400 and bad.json()["error"]["reason"] == "not_an_image"


@pytest.fixture(scope="module")
def busy_server(slow_model):
    """The full-size model (a heatmap takes a good fraction of a second) with no explain queue."""
    env = {**SERVER_ENV, "CLASSIFIER_MODEL_TAG": slow_model, "CLASSIFIER_EXPLAIN_QUEUE": "0"}
    with serve(env) as url:
        yield url


def test_an_overloaded_explain_answers_503_and_predictions_are_unaffected(busy_server):
    photo = PHOTO.read_bytes()

    def predict(_: int) -> int:
        return httpx.post(
            f"{busy_server}/v1/predict", content=photo, headers={"content-type": "image/jpeg"}, timeout=120
        ).status_code

    with ThreadPoolExecutor(16) as pool:
        explains = [pool.submit(_explain, busy_server, photo) for _ in range(6)]
        predictions = list(pool.map(predict, range(10)))
        answers = [f.result() for f in explains]
    statuses = sorted(a.status_code for a in answers)
    assert predictions == [200] * 10
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
    shed = next(a for a in answers if a.status_code == 503)
    assert shed.json()["error"]["reason"] == "explain_busy" and shed.headers["retry-after"]
    metrics = httpx.get(f"{busy_server}/metrics").text
    assert total(metrics, "image_classifier_explain_shed_requests_total") == statuses.count(503)
    assert total(metrics, "image_classifier_explain_duration_seconds_count") == statuses.count(200)
    assert total(metrics, "image_classifier_explain_cpu_seconds_total") > 0
