"""Trust, end to end: a model trained with --ood-data flags images of another kind, every engine agrees on its
probabilities and OOD scores, the server answers known/unknown, its drift gauge moves when only one class is
sent, and a model saved before OOD detection still serves."""

from __future__ import annotations

import io
import json
import random

import bentoml
import httpx
import pytest
from safetensors.torch import load, save

from classifier.contract import METADATA_KEY
from classifier.store import WEIGHTS_FILE, describe_model
from loadtests.servers import serve, serve_process
from tests.integration.conftest import ONNX, SERVER_ENV
from tests.support.cli import saved_tag, train
from tests.support.prom import total
from tests.support.synthetic import make_dataset, make_image, make_others

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trust_run(tmp_path_factory):
    """A model trained on 2 x 100 images (200 validation, 200 test: enough for the 95% threshold to transfer) with
    60 images of a third kind as --ood-data."""
    root = tmp_path_factory.mktemp("trust")
    data = make_dataset(root / "data", per_class=100, val_per_class=200)
    others = make_others(root / "others", count=60)
    out = root / "out"
    args = ["--weights", "none", "--image-size", "64", "--epochs", "3", "--workers", "0", "--test-ratio", "0.5"]
    args += ["--name", "trust"]
    tag = saved_tag(train("--data", str(data), "--output", str(out), "--ood-data", str(others), *args))
    return tag, json.loads((out / "metrics.json").read_text()), out


def jpegs(label: int, count: int, seed: int) -> list[tuple[str, bytes]]:
    """Fresh images of one synthetic class (2: the kind no class holds), as JPEG uploads."""
    rng, files = random.Random(seed), []
    for i in range(count):
        buffer = io.BytesIO()
        make_image(label, rng).save(buffer, format="JPEG", quality=90)
        files.append((f"{label}-{i}.jpg", buffer.getvalue()))
    return files


def classify(url: str, files: list[tuple[str, bytes]]) -> list[dict]:
    results = []
    for start in range(0, len(files), 12):
        batch = [("images", f) for f in files[start : start + 12]]
        response = httpx.post(f"{url}/v1/predict/batch", files=batch, timeout=120)
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    return results


def test_training_flags_other_images_and_reports_it(trust_run):
    tag, report, out = trust_run
    ood = report["ood"]
    assert ood["method"] == "mahalanobis" and ood["accept_rate"] == 0.95
    assert ood["val_flagged"] <= 0.1 and ood["test_flagged"] <= 0.1  # in-domain images stay known
    other = ood["ood_data"]
    assert other["images"] == 60 and other["flagged"] >= 0.9  # images of another kind are flagged
    assert other["auroc"]["mahalanobis"] >= 0.9 and set(other["auroc"]) == {"mahalanobis", "energy", "max_softmax"}
    assert (out / "ood_scores.png").read_bytes().startswith(PNG)
    calibration = report["calibration"]
    assert calibration["test_ece_after"] < calibration["test_ece_before"]
    model = describe_model(tag)
    assert model.contract.ood.threshold == ood["threshold"] and model.metadata["ood"]["ood_data"]["images"] == 60


def test_engines_agree_on_probabilities_and_ood_scores(trust_run):
    """The tolerances docs/training.md states: fp32 graphs match PyTorch; INT8 on PyTorch's scale is close and
    answers known the same way for nearly every image."""
    tag, report, _ = trust_run
    engines = report["engines"]
    assert engines["images"] == 200
    fp32, int8 = engines["onnx"], engines["onnx-int8"]
    assert fp32["max_abs_probability_diff"] < 1e-3 and fp32["max_rel_ood_score_diff"] < 0.01
    assert fp32["known_agreement_with_torch"] == 1.0
    assert int8["median_rel_ood_score_diff"] < 0.1 and int8["known_agreement_with_torch"] >= 0.9
    scales = describe_model(tag).contract.ood.score_scales
    assert "onnx" not in scales and 0.2 < scales["onnx-int8"] < 5  # fp32 needs none


def test_the_server_answers_unknown_and_its_drift_gauge_moves(trust_run):
    tag, report, _ = trust_run
    env = {
        "CLASSIFIER_MODEL_TAG": tag,
        **SERVER_ENV,
        **ONNX,
        "CLASSIFIER_UNKNOWN": "abstain",
        "CLASSIFIER_DRIFT_WINDOW": "100",
    }
    with serve(env) as url:
        # 60 cats and 40 dogs, mixed: the first full window, a small PSI (about 0.04) against 50/50 training shares
        mixed = classify(url, [f for pair in zip(jpegs(0, 40, 1), jpegs(1, 40, 2), strict=True) for f in pair])
        mixed += classify(url, jpegs(0, 20, 6))
        calm = total(httpx.get(f"{url}/metrics", timeout=60).text, "image_classifier_drift_psi")
        others = classify(url, jpegs(2, 24, 3))
        one_class = classify(url, jpegs(0, 120, 4))
        metrics = httpx.get(f"{url}/metrics", timeout=60).text
        info = httpx.get(f"{url}/v1/model", timeout=60).json()
    known = [r["known"] for r in mixed + one_class]
    assert sum(known) >= 0.9 * len(known)  # in-domain images are known, with their class as the label
    assert all(r["label"] == r["top_k"][0]["label"] for r in mixed + one_class if r["known"])
    unknown = [r for r in others if r["known"] is False]
    assert len(unknown) >= 0.75 * len(others)  # abstained: label "unknown", the classes still in top_k
    assert all(r["label"] == "unknown" and r["top_k"][0]["label"] in ("cats", "dogs") for r in unknown)
    threshold = info["contract"]["ood"]["threshold"]
    assert all((r["ood_score"] > threshold) == (r["known"] is False) for r in mixed + others + one_class)
    assert info["unknown"] == "abstain" and info["ood"]["ood_data"]["flagged"] == report["ood"]["ood_data"]["flagged"]
    # The metrics: every answer's score, the unknown ones, the threshold, and drift from calm to one class only.
    answers = len(mixed) + len(others) + len(one_class)
    assert total(metrics, "image_classifier_ood_score_count") == answers
    assert total(metrics, "image_classifier_unknown_predictions_total") == sum(
        r["known"] is False for r in mixed + others + one_class
    )
    assert total(metrics, "image_classifier_ood_threshold") == pytest.approx(threshold)
    assert total(metrics, "image_classifier_training_class_share", class_name="cats") == 0.5
    assert 0.005 < calm < 0.1 < 0.25 < total(metrics, "image_classifier_drift_psi")  # computed, calm, then moved


def test_a_model_saved_before_ood_detection_still_serves_with_a_warning(trust_run, tmp_path):
    """Its contract has no ood entry and its weights no OOD buffers: answers carry no score, known is null."""
    tag, _, _ = trust_run
    source = bentoml.models.get(tag)
    metadata = dict(source.info.metadata)
    metadata[METADATA_KEY] = {k: v for k, v in metadata[METADATA_KEY].items() if k != "ood"}
    metadata.pop("ood")
    weights = load(open(source.path_of(WEIGHTS_FILE), "rb").read())
    with bentoml.models.create("trust-old", metadata=metadata) as model:
        with open(model.path_of(WEIGHTS_FILE), "wb") as fh:
            fh.write(save({k: v for k, v in weights.items() if not k.startswith("ood.")}))
    log = tmp_path / "server.log"
    with serve_process({"CLASSIFIER_MODEL_TAG": str(model.tag), **SERVER_ENV}, log_path=log) as server:
        (result,) = classify(server.url, jpegs(2, 1, 5))
        info = httpx.get(f"{server.url}/v1/model", timeout=60).json()
    assert result["ood_score"] is None and result["known"] is None and result["label"] in ("cats", "dogs")
    assert info["engine"] == "torch" and info["contract"]["ood"] is None and info["ood"] == {}
    assert "saved without an out-of-distribution score" in log.read_text()
