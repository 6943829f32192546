"""With CLASSIFIER_API_KEY set, the /v1 and /v2 endpoints need the key; health and metrics stay open; the key is
never logged."""

from __future__ import annotations

import httpx
import pytest

from loadtests.servers import serve
from tests.integration.conftest import ONNX, SERVER_ENV
from tests.integration.test_service import HOPPER

pytestmark = pytest.mark.slow
KEY = "test-key-4f1d9c2a7b3e8d6f"


def test_api_key_guards_the_predictions_only(trained_model, tmp_path):
    log = tmp_path / "server.log"
    with serve(
        {"CLASSIFIER_MODEL_TAG": trained_model, **SERVER_ENV, **ONNX, "CLASSIFIER_API_KEY": KEY}, log_path=log
    ) as url:
        files = {"image": ("hopper.jpg", HOPPER)}
        missing = httpx.post(f"{url}/v1/predict", files=files, timeout=60)
        bad_query = httpx.post(f"{url}/v1/predict", params={"top_k": 0}, files=files, timeout=60)  # key first
        wrong = httpx.post(f"{url}/v1/predict", files=files, headers={"X-API-Key": KEY[:-1] + "0"}, timeout=60)
        bearer = httpx.post(f"{url}/v1/predict", files=files, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        header = httpx.post(
            f"{url}/v1/predict/batch", files=[("images", ("a.jpg", HOPPER))], headers={"X-API-Key": KEY}, timeout=60
        )
        info = httpx.get(f"{url}/v1/model", timeout=60)
        explain = httpx.post(f"{url}/v1/explain", files=files, timeout=60)
        feedback = httpx.post(f"{url}/v1/feedback", json={"request_id": "x", "label": "cats"}, timeout=60)
        explained = httpx.post(f"{url}/v1/explain", files=files, headers={"X-API-Key": KEY}, timeout=60)
        name, version = trained_model.split(":")
        oip = [httpx.get(f"{url}/v2", timeout=60), httpx.get(f"{url}/v2/models/{name}", timeout=60)]
        oip.append(httpx.get(f"{url}/v2/models/{name}/versions/{version}", timeout=60))
        oip.append(httpx.post(f"{url}/v2/models/{name}/infer", json={"inputs": []}, timeout=60))
        oip.append(httpx.post(f"{url}/v2/models/{name}/versions/{version}/infer", json={"inputs": []}, timeout=60))
        oip_keyed = httpx.get(f"{url}/v2/models/{name}", headers={"X-API-Key": KEY}, timeout=60)
        health = (
            "/livez",
            "/readyz",
            "/metrics",
            "/v2/health/live",
            "/v2/health/ready",
            f"/v2/models/{name}/ready",
            f"/v2/models/{name}/versions/{version}/ready",
            "/v1/docs",
            "/v1/openapi.json",
            "/docs.json",
        )
        open_paths = [httpx.get(f"{url}{path}", timeout=60).status_code for path in health]
        metrics = httpx.get(f"{url}/metrics", timeout=60).text
    for refused in (missing, bad_query, wrong, info, explain, feedback):
        assert refused.status_code == 401 and refused.json()["error"]["reason"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
    for refused in oip:  # the protocol's error shape
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
    assert bearer.status_code == 200 and header.status_code == 200 and explained.status_code == 200
    assert oip_keyed.status_code == 200
    assert open_paths == [200] * len(health)
    assert 'image_classifier_rejected_inputs_total{reason="unauthorized"} 11.0' in metrics
    assert KEY not in log.read_text() and KEY[:-1] not in log.read_text()
