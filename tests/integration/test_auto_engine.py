"""CLASSIFIER_ENGINE=auto on the CPU, end to end: the server measures the engines the model carries on its reference
sample, serves the fastest eligible one, shows the measurement in /v1/model and the metric, and a restart reads the
cached choice instead of measuring again."""

from __future__ import annotations

import httpx

from loadtests.servers import serve
from tests.conftest import ODD_IMAGES
from tests.integration.conftest import SERVER_ENV
from tests.support.prom import total


def _start(trained_model: str, cache) -> tuple[dict, str]:
    with serve({"CLASSIFIER_MODEL_TAG": trained_model, "CLASSIFIER_CACHE_DIR": str(cache), **SERVER_ENV}) as url:
        photo = (ODD_IMAGES / "hopper.jpg").read_bytes()
        assert httpx.post(f"{url}/v1/predict", files={"image": ("h.jpg", photo)}, timeout=60).status_code == 200
        return httpx.get(f"{url}/v1/model", timeout=60).json(), httpx.get(f"{url}/metrics", timeout=60).text


def test_auto_serves_the_fastest_eligible_engine_and_caches_the_choice(trained_model, tmp_path):
    info, metrics = _start(trained_model, tmp_path)
    choice = info["engine_choice"]
    assert choice is not None and not choice["cached"] and info["engine"] == choice["chosen"]
    candidates = {c["name"]: c for c in choice["candidates"]}
    assert {"torch", "onnx", "onnx-int8", "openvino", "openvino-int8"} <= set(candidates)
    assert candidates["onnx"]["agreement"] == 1.0 and candidates["onnx"]["eligible"]  # fp32 graph: PyTorch's answers
    eligible = [c for c in candidates.values() if c["eligible"]]
    assert candidates[choice["chosen"]] == max(eligible, key=lambda c: c["images_per_s"])
    assert all(c["images_per_s"] is None for c in candidates.values() if not c["eligible"])
    assert total(metrics, "image_classifier_model_info", engine=choice["chosen"]) == 1
    assert "threads, batch 4" in choice["host"]  # measured at the served batch size

    again, _ = _start(trained_model, tmp_path)
    assert again["engine_choice"] == {**choice, "cached": True} and again["engine"] == choice["chosen"]
