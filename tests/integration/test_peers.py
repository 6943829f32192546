"""The benchmark's peers set themselves up (a virtual environment each, nothing global) and serve our model: one
photo through TorchServe's image_classifier handler, and through Triton (pytriton) with each engine it runs.
Skipped only when a peer's packages cannot be installed here, with pip's reason."""

from __future__ import annotations

import httpx
import pytest

from loadtests.peers import PeerUnavailable, torchserve, triton
from loadtests.traffic import triton_request
from tests.conftest import ODD_IMAGES

pytestmark = pytest.mark.slow
PHOTO = (ODD_IMAGES / "hopper.jpg").read_bytes()


def _set_up(setup) -> None:
    try:
        setup()
    except PeerUnavailable as exc:
        pytest.skip(f"peer cannot be set up here: {exc}")


def test_torchserve_serves_our_model_with_its_image_classifier_handler(trained_model):
    _set_up(torchserve.setup)
    with torchserve.serve(trained_model, max_batch_size=4) as (url, _):
        answer = httpx.post(f"{url}/predictions/{torchserve.MODEL}", files={"data": ("h.jpg", PHOTO)}, timeout=120)
    assert answer.status_code == 200, answer.text
    scores = answer.json()
    assert set(scores) == {"cats", "dogs"} and abs(sum(scores.values()) - 1) < 1e-3  # softmax over our classes


@pytest.mark.parametrize("engine", ["onnx", "openvino-int8"])
def test_triton_serves_our_model_with_the_engine_asked_for(trained_model, engine):
    _set_up(triton.setup)
    body, headers = triton_request(PHOTO)
    with triton.serve(trained_model, engine, max_batch_size=4) as (url, _):
        answer = httpx.post(f"{url}/v2/models/{triton.MODEL}/infer", content=body, headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [1, 2] and abs(sum(output["data"]) - 1) < 1e-3
