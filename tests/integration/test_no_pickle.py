"""No pickle on the request path: every call to pickle.loads in the server's processes is recorded,
and serving images through both model endpoints (decoded in the front, and JPEGs decoded next to the
model) must not make BentoML's service-to-service serde unpickle anything."""

from __future__ import annotations

import os

import httpx
import pytest

from loadtests.servers import serve
from tests.conftest import ODD_IMAGES
from tests.integration.conftest import ONNX, SERVER_ENV

pytestmark = pytest.mark.slow

RECORDER = r"""
import os, pickle, sys
_loads = pickle.loads
def loads(data, *args, **kwargs):
    with open(os.environ["PICKLE_LOG"], "a") as log:
        log.write(sys._getframe(1).f_code.co_filename + "\n")
    return _loads(data, *args, **kwargs)
pickle.loads = loads
with open(os.environ["PICKLE_LOG"], "a") as log:
    log.write("process " + " ".join(sys.argv) + "\n")
"""


def test_serving_never_unpickles(trained_model, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(RECORDER)  # imported by every Python process of the server
    log = tmp_path / "pickle.log"
    env = {
        **SERVER_ENV,
        **ONNX,
        "CLASSIFIER_MODEL_TAG": trained_model,
        "CLASSIFIER_JPEG_DECODE": "engine",
        "PICKLE_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    with serve(env) as url:
        for name in ("hopper.jpg", "hopper.png"):  # infer_jpeg, then infer
            with httpx.Client(timeout=60) as http:
                response = http.post(f"{url}/v1/predict", files={"image": (name, (ODD_IMAGES / name).read_bytes())})
            assert response.status_code == 200, response.text
    lines = log.read_text().splitlines()
    processes = [line for line in lines if line.startswith("process ")]
    assert any("model_runner" in p for p in processes) and any("image_classifier" in p for p in processes)  # watched
    unpickled_by = [line for line in lines if not line.startswith("process ")]
    assert not [c for c in unpickled_by if "bentoml" in c], unpickled_by
