"""The same model served by each engine and decode path gives the same answers as the default server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from loadtests.servers import serve
from loadtests.traffic import PHOTOS, photo_files
from tests.conftest import ODD_IMAGES
from tests.integration.conftest import ONNX, SERVER_ENV
from tests.support.prom import total

pytestmark = pytest.mark.slow
FILES = [(p.name, p.read_bytes()) for p in photo_files(PHOTOS)] + [
    (name, (ODD_IMAGES / name).read_bytes())
    for name in ("hopper.png", "hopper_orientation_6.jpg", "pil_sample_cmyk.jpg")
]


def probabilities(url: str, files=FILES) -> np.ndarray:
    """Each image's probabilities in class order, then its OOD score."""
    response = httpx.post(f"{url}/v1/predict/batch", files=[("images", f) for f in files], timeout=120)
    assert response.status_code == 200, response.text
    return np.array(
        [
            [s["probability"] for s in sorted(r["top_k"], key=lambda s: s["label"])] + [r["ood_score"]]
            for r in response.json()["results"]
        ]
    )


@pytest.fixture(scope="module")
def reference(server) -> np.ndarray:
    """What the default server (ONNX Runtime fp32, decoding in the front) answers."""
    return probabilities(server)


@pytest.mark.parametrize(
    "env, tolerance, ood_tolerance",
    [
        ({"CLASSIFIER_ENGINE": "torch"}, 1e-3, 0.01),  # the same network in PyTorch
        ({"CLASSIFIER_ENGINE": "onnx-int8"}, 0.25, 0.5),  # quantized: close, not equal
        # plain JPEGs decoded as a batch next to the model (the GPU path, here on the CPU). The photos are
        # large for this 64 px model: the front's Pillow path decodes them at 1/4 scale (JPEG draft), the
        # batch decoder at full size, so the pixels differ slightly; at 224 px they match (unit test).
        ({"CLASSIFIER_JPEG_DECODE": "engine"}, 0.15, 0.25),
    ],
    ids=["torch", "onnx-int8", "jpeg-decode-engine"],
)
def test_engines_agree(trained_model, reference, env, tolerance, ood_tolerance):
    with serve({"CLASSIFIER_MODEL_TAG": trained_model, **SERVER_ENV, **ONNX, **env}) as url:
        probs = probabilities(url)
        info = httpx.get(f"{url}/v1/model", timeout=60).json()
        metrics = httpx.get(f"{url}/metrics", timeout=60).text
        corrupt = photo_files(PHOTOS)[0].read_bytes()
        bad = httpx.post(
            f"{url}/v1/predict/batch", files=[("images", FILES[0]), ("images", ("cut.jpg", corrupt[:5000]))], timeout=60
        )
    assert probs.shape == reference.shape
    assert np.abs(probs[:, :-1] - reference[:, :-1]).max() < tolerance
    relative = np.abs(probs[:, -1] - reference[:, -1]) / reference[:, -1]  # the OOD scores, on PyTorch's scale
    assert relative.max() < ood_tolerance
    assert info["engine"] == env.get("CLASSIFIER_ENGINE", "onnx")
    assert total(metrics, "image_classifier_model_info", engine=info["engine"]) == 1
    assert bad.status_code == 400 and bad.json()["error"] == {
        "reason": "corrupt_image",
        "message": bad.json()["error"]["message"],
        "file": "cut.jpg",
        "index": 1,
    }
    jpeg_calls = total(metrics, "bentoml_service_request_total", endpoint="/infer_jpeg", http_response_code="200")
    if env.get("CLASSIFIER_JPEG_DECODE") == "engine":
        assert jpeg_calls >= 1  # the photos went to the runner undecoded
    else:
        assert jpeg_calls == 0
