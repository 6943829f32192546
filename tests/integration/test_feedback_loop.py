"""The feedback loop on the real server: predict, send the true labels, retrain from the feedback folder; and
bad feedback, each with its 4xx and nothing written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import bentoml
import httpx
import pytest
from PIL import Image

from loadtests.servers import serve
from tests.integration.conftest import ONNX, SERVER_ENV
from tests.support.cli import saved_tag, train, train_small
from tests.support.prom import total
from tests.support.synthetic import make_dataset

CLASSES = ("cats", "dogs")


def _stored(folder: Path) -> list[Path]:
    """The images kept, in their class folders."""
    return sorted(p for name in CLASSES if (folder / name).is_dir() for p in (folder / name).iterdir())


def _written(folder: Path) -> dict[Path, int]:
    """Every file in the folder (the log included) and its size."""
    return {p: p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A model trained on generated images, served with a feedback folder."""
    root = tmp_path_factory.mktemp("feedback-loop")
    data = make_dataset(root / "data", per_class=12)
    tag = train_small(data, root / "out", name="feedback-test")
    folder = root / "feedback"
    env = {**SERVER_ENV, "CLASSIFIER_MODEL_TAG": tag, "CLASSIFIER_FEEDBACK_DIR": str(folder)}
    with serve(env) as url:
        yield {"url": url, "data": data, "folder": folder, "tag": tag, "root": root}


def test_predict_feedback_retrain(loop):
    url, folder = loop["url"], loop["folder"]
    new = make_dataset(loop["root"] / "new", per_class=4, seed=11)
    files = sorted(new.rglob("*.jpg"))
    truth = [f.parent.name for f in files]
    response = httpx.post(
        f"{url}/v1/predict/batch",
        files=[("images", (f.name, f.read_bytes(), "image/jpeg")) for f in files],
        headers={"X-Request-ID": "batch-1"},
        timeout=120,
    )
    body = response.json()
    assert response.status_code == 200 and body["request_id"] == "batch-1" == response.headers["x-request-id"]
    wrong = [i for i, (r, t) in enumerate(zip(body["results"], truth, strict=True)) if r["label"] != t]
    if not wrong:  # a model this small may get them all: then a user's correction of the first one, contrary or not
        wrong, truth[0] = [0], next(c for c in CLASSES if c != body["results"][0]["label"])
    for i in wrong:  # the answers a user would correct
        fixed = httpx.post(f"{url}/v1/feedback", json={"request_id": "batch-1", "index": i, "label": truth[i]})
        assert fixed.status_code == 200 and fixed.json()["correct"] is False and fixed.json()["stored"]
    single = httpx.post(f"{url}/v1/predict", content=files[0].read_bytes(), headers={"content-type": "image/jpeg"})
    reviewed = httpx.post(f"{url}/v1/feedback", json={"request_id": single.json()["request_id"], "label": truth[0]})
    assert reviewed.json()["correct"] == (single.json()["label"] == truth[0])
    uploaded = httpx.post(
        f"{url}/v1/feedback", files={"image": ("new.jpg", files[-1].read_bytes(), "image/jpeg")}, data={"label": "dogs"}
    )
    assert uploaded.status_code == 200, uploaded.text
    metrics = httpx.get(f"{url}/metrics").text
    assert total(metrics, "image_classifier_feedback_total", outcome="wrong") == len(wrong) + (
        not reviewed.json()["correct"]
    )
    stored = _stored(folder)
    assert len(stored) == len({*(files[i] for i in wrong), files[0], files[-1]})  # the same image is kept once
    assert total(metrics, "image_classifier_feedback_folder_images") == len(stored)

    result = train(
        "--data", str(loop["data"]), "--extra-data", str(folder), "--weights", "none", "--image-size", "64",
        "--epochs", "1", "--workers", "0", "--export", "none", "--name", "feedback-test",
        "--output", str(loop["root"] / "retrained"),
    )  # fmt: skip
    retrained = saved_tag(result)
    assert retrained != loop["tag"]
    dataset = bentoml.models.get(retrained).info.metadata["dataset"]
    assert dataset["extra"]["images"] == len(stored) and dataset["extra"]["root"] == str(folder)
    base = bentoml.models.get(loop["tag"]).info.metadata["dataset"]["counts"]
    assert sum(dataset["counts"]["train"].values()) == sum(base["train"].values()) + len(stored)
    assert dataset["counts"]["test"] == base["test"]  # the test split is the same: figures stay comparable
    report = json.loads((loop["root"] / "retrained" / "metrics.json").read_text())
    assert report["dataset"]["extra"]["counts"] == {
        name: sum(p.parent.name == name for p in stored) for name in CLASSES
    }


def _jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()


def _by_id(request_id: str, label: str, key: str = "label"):
    return lambda url: httpx.post(f"{url}/v1/feedback", json={"request_id": request_id, key: label})


def _image(name: str, size: tuple[int, int], label: str | None = "cats"):
    form = {"label": label} if label else {}
    return lambda url: httpx.post(
        f"{url}/v1/feedback", files={"image": (name, _jpeg(size), "image/jpeg")}, data=form, timeout=60
    )


def _bad_request_id(url: str) -> httpx.Response:
    headers = {"content-type": "image/jpeg", "x-request-id": "../x"}
    return httpx.post(f"{url}/v1/predict", content=_jpeg((50, 50)), headers=headers)


@pytest.mark.parametrize(
    ("send", "status", "reason"),
    [
        (_by_id("never-sent", "cats"), 404, "unknown_request_id"),
        (_by_id("x", "wolves"), 400, "unknown_label"),
        (_by_id("x", "cats", key="lable"), 400, "bad_request"),
        (_image("a.jpg", (1500, 1500)), 413, "body_too_large"),
        (_image("../../etc/a.jpg", (50, 50)), 400, "bad_filename"),
        (_image("a.jpg", (50, 50), label=None), 400, "missing_field"),
        (_bad_request_id, 400, "bad_request_id"),
    ],
)
def test_bad_feedback_gets_its_4xx_and_writes_nothing(loop, send, status, reason):
    before = _written(loop["folder"])
    response = send(loop["url"])
    assert response.status_code == status and response.json()["error"]["reason"] == reason, response.text
    assert _written(loop["folder"]) == before


def test_a_full_feedback_folder_refuses_with_409(trained_model, tmp_path):
    folder = tmp_path / "feedback"
    (folder / "cats").mkdir(parents=True)
    (folder / "cats" / "earlier.jpg").write_bytes(_jpeg((40, 40)))
    env = {
        **SERVER_ENV,
        **ONNX,
        "CLASSIFIER_MODEL_TAG": trained_model,
        "CLASSIFIER_FEEDBACK_DIR": str(folder),
        "CLASSIFIER_FEEDBACK_MAX_IMAGES": "1",
    }
    with serve(env) as url:
        response = httpx.post(
            f"{url}/v1/feedback", files={"image": ("a.jpg", _jpeg((50, 50)), "image/jpeg")}, data={"label": "dogs"}
        )
    assert response.status_code == 409 and response.json()["error"]["reason"] == "feedback_full"
    assert _stored(folder) == [folder / "cats" / "earlier.jpg"]
