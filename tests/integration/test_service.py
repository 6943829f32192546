"""The real server (`bentoml serve`) answering real requests: schema, odd images, bad input, batching, metrics."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.conftest import ODD_IMAGES
from tests.support.prom import total
from tests.unit.test_imaging import DECODABLE, REJECTED

pytestmark = pytest.mark.slow
HOPPER = (ODD_IMAGES / "hopper.jpg").read_bytes()


def post_one(url: str, data: bytes, name: str = "x.jpg", **params) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/predict", files={"image": (name, data, "application/octet-stream")}, params=params, timeout=120
    )


def post_many(url: str, files: list[tuple[str, bytes]], **params) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/predict/batch",
        files=[("images", (n, d, "image/jpeg")) for n, d in files],
        params=params,
        timeout=120,
    )


def metrics_text(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30).text


def error(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_health_endpoints(server):
    assert httpx.get(f"{server}/livez", timeout=60).status_code == 200
    assert httpx.get(f"{server}/readyz", timeout=60).status_code == 200


def test_predict_one_image_schema(server, trained_model):
    r = post_one(server, HOPPER, "hopper.jpg")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == trained_model and body["filename"] == "hopper.jpg"
    labels = [s["label"] for s in body["top_k"]]
    assert sorted(labels) == ["cats", "dogs"]  # default top_k = min(5, classes)
    probs = [s["probability"] for s in body["top_k"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert (body["label"], body["probability"]) == (labels[0], probs[0])
    assert len(post_one(server, HOPPER, top_k=1).json()["top_k"]) == 1


def test_raw_body_equals_multipart(server):
    raw = httpx.post(f"{server}/v1/predict", content=HOPPER, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200, raw.text
    assert raw.json()["top_k"] == post_one(server, HOPPER).json()["top_k"]


def test_many_images_in_input_order(server):
    names = ["hopper.png", "hopper_gray.jpg", "pil_sample_cmyk.jpg", "hopper.jpg", "p_16.png"]
    r = post_many(server, [(n, (ODD_IMAGES / n).read_bytes()) for n in names])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == names
    for name, result in zip(names, results, strict=True):
        single = post_one(server, (ODD_IMAGES / name).read_bytes()).json()
        assert result["top_k"][0]["label"] == single["label"]
        assert result["probability"] == pytest.approx(single["probability"], abs=1e-4)


@pytest.mark.parametrize("name", DECODABLE)
def test_every_decodable_odd_image_is_predicted(server, name):
    r = post_one(server, (ODD_IMAGES / name).read_bytes(), name)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("name, reason", sorted(REJECTED.items()))
def test_every_broken_odd_image_gets_400_with_reason(server, name, reason):
    r = post_one(server, (ODD_IMAGES / name).read_bytes(), name)
    assert r.status_code == 400 and error(r)["reason"] == reason and error(r)["message"]


def test_same_photo_six_formats_same_top1(server):
    names = ["hopper.jpg", "hopper.png", "hopper.webp", "hopper.gif", "hopper.tif", "hopper.bmp"]
    top1 = {post_one(server, (ODD_IMAGES / n).read_bytes(), n).json()["label"] for n in names}
    assert len(top1) == 1


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "send, status, reason",
    [
        (
            lambda u: httpx.post(f"{u}/v1/predict", content=b"", headers={"Content-Type": "image/png"}, timeout=60),
            400,
            "empty",
        ),
        (
            lambda u: httpx.post(
                f"{u}/v1/predict", content=b"hello", headers={"Content-Type": "text/plain"}, timeout=60
            ),
            415,
            "unsupported_media_type",
        ),
        (lambda u: httpx.post(f"{u}/v1/predict", files={"file": ("a.jpg", HOPPER)}, timeout=60), 400, "missing_field"),
        (lambda u: httpx.post(f"{u}/v1/predict", files={"image": ("a.jpg", b"")}, timeout=60), 400, "empty"),
        (
            lambda u: httpx.post(
                f"{u}/v1/predict", content=b"<html></html>", headers={"Content-Type": "image/jpeg"}, timeout=60
            ),
            400,
            "not_an_image",
        ),
        (
            lambda u: httpx.post(
                f"{u}/v1/predict", content=b"x" * (3 * 1024 * 1024), headers={"Content-Type": "image/jpeg"}, timeout=60
            ),
            413,
            "body_too_large",
        ),
        (lambda u: post_one(u, _png(1500, 1500)), 400, "too_many_pixels"),
        (lambda u: post_one(u, HOPPER, top_k=0), 400, "bad_parameter"),
        (
            lambda u: httpx.post(
                f"{u}/v1/predict",
                content=b"--zz\r\nxx",
                headers={"Content-Type": "multipart/form-data; boundary=yy"},
                timeout=60,
            ),
            400,
            "bad_multipart",
        ),
        (lambda u: post_many(u, [("a.jpg", HOPPER)] * 13), 400, "too_many_images"),
        (
            lambda u: httpx.post(
                f"{u}/v1/predict/batch", content=HOPPER, headers={"Content-Type": "image/jpeg"}, timeout=60
            ),
            415,
            "unsupported_media_type",
        ),
    ],
    ids=[
        "empty-body",
        "wrong-type",
        "missing-field",
        "empty-file",
        "html-as-jpeg",
        "body-too-large",
        "too-many-pixels",
        "bad-top-k",
        "bad-multipart",
        "too-many-images",
        "batch-raw-body",
    ],
)
def test_bad_input_gets_4xx_with_reason_and_server_keeps_answering(server, send, status, reason):
    before = total(metrics_text(server), "image_classifier_rejected_inputs_total", reason=reason)
    r = send(server)
    assert r.status_code == status, r.text
    assert error(r)["reason"] == reason and error(r)["message"]
    assert total(metrics_text(server), "image_classifier_rejected_inputs_total", reason=reason) == before + 1
    assert post_one(server, HOPPER).status_code == 200


def test_bad_image_in_batch_names_the_file(server):
    r = post_many(
        server, [("ok.jpg", HOPPER), ("bad.png", (ODD_IMAGES / "broken.png").read_bytes()), ("ok2.jpg", HOPPER)]
    )
    assert r.status_code == 400
    assert error(r) == {**error(r), "reason": "not_an_image", "file": "bad.png", "index": 1}


def test_one_bad_client_does_not_fail_its_batch_mates(server):
    truncated = (ODD_IMAGES / "truncated_jpeg.jpg").read_bytes()
    jobs = [truncated if i % 4 == 0 else HOPPER for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda data: post_one(server, data).status_code, jobs))
    assert codes == [400 if i % 4 == 0 else 200 for i in range(24)]


def _passes(text: str) -> dict[str, float]:
    """Forward passes so far, by images per pass (ours: BentoML's adaptive batching histogram counts the calls it
    merged, and the front already sends one call per model worker with the requests that arrived meanwhile)."""
    return {
        "all": total(text, "image_classifier_inference_batch_images_count"),
        "<=2": total(text, "image_classifier_inference_batch_images_bucket", le="2.0"),
        "<=4": total(text, "image_classifier_inference_batch_images_bucket", le="4.0"),
    }


def test_concurrent_requests_form_batches_bounded_by_max(server):
    """One-image requests sent at once share forward passes, of at most CLASSIFIER_MAX_BATCH_SIZE (4) images."""
    before = _passes(metrics_text(server))
    deadline = time.monotonic() + 120
    while True:  # bursts until a pass carries 3-4 requests' images: how many it takes depends on the host's speed
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: post_one(server, HOPPER).status_code, range(48)))
        assert codes == [200] * 48
        merged = _passes(metrics_text(server))
        if merged["<=2"] - before["<=2"] < merged["all"] - before["all"]:
            break
        assert time.monotonic() < deadline, "16 concurrent clients never had more than 2 images in one forward pass"
    assert post_many(server, [("a.jpg", HOPPER)] * 10).status_code == 200  # 10 images, max batch 4
    now = _passes(metrics_text(server))
    assert now["<=4"] - before["<=4"] == now["all"] - before["all"]  # no pass over the maximum


def test_project_metrics_move(server, trained_model):
    before = metrics_text(server)
    label = post_one(server, HOPPER).json()["label"]
    after = metrics_text(server)
    name = "image_classifier_predictions_total"
    assert total(after, name, class_name=label) == total(before, name, class_name=label) + 1
    for hist in (
        "image_classifier_prediction_confidence_count",
        "image_classifier_preprocess_duration_seconds_count",
        "image_classifier_inference_duration_seconds_count",
    ):
        assert total(after, hist) >= total(before, hist) + 1, hist
    cpu = "image_classifier_inference_cpu_seconds_total"  # the forward pass's CPU, counted where it runs
    assert total(after, cpu) > total(before, cpu)
    assert (
        total(after, "image_classifier_model_info", tag=trained_model, backbone="resnet50", device="cpu", engine="onnx")
        == 1
    )
    assert total(after, "bentoml_service_request_total", endpoint="/v1/predict", http_response_code="200") > 0


def test_model_information(server, trained_model):
    info = httpx.get(f"{server}/v1/model", timeout=60).json()
    assert info["tag"] == trained_model and info["class_names"] == ["cats", "dogs"]
    assert info["backbone"] == "resnet50" and info["device"] == "cpu"
    assert info["engine"] == "onnx" and info["engine_choice"] is None  # set, not measured
    assert info["contract"]["image_size"] == 64 and info["contract"]["mean"] == [0.485, 0.456, 0.406]
    assert 0 <= info["training_metrics"]["accuracy"] <= 1
    calibration = info["calibration"]  # 12 images per class: too few validation images to fit a temperature
    assert (
        calibration["temperature"] == info["contract"]["temperature"] == 1.0
        and "not fitted" in calibration["fitted_on"]
    )
    assert info["batching"] == {"max_batch_size": 4, "max_latency_ms": 30000}
    assert info["limits"]["max_images"] == 12


def test_openapi_page_shows_the_schemas(server):
    spec = httpx.get(f"{server}/docs.json", timeout=60).json()
    assert {"/v1/predict", "/v1/predict/batch", "/v1/model"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"PredictResponse", "BatchPredictResponse", "ErrorResponse", "ModelInfo"} <= set(schemas)
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    answer = schemas["Prediction"]["properties"]  # each image's answer, alone or in a batch
    assert (
        "Mahalanobis" in answer["ood_score"]["description"] and "CLASSIFIER_UNKNOWN" in answer["known"]["description"]
    )
    assert schemas["ModelInfo"]["properties"]["unknown"]["enum"] == ["flag", "abstain", "off"]
    paths = spec["paths"]
    assert "image/png" in paths["/v1/explain"]["post"]["responses"]["200"]["content"]
    assert {"heatmap", "overlay_png", "target", "request_id"} <= set(schemas["ExplainResponse"]["properties"])
    feedback = paths["/v1/feedback"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(feedback)
    assert feedback["application/json"]["schema"]["required"] == ["request_id", "label"]
    assert {"404", "409"} <= set(paths["/v1/feedback"]["post"]["responses"])


def test_pickle_is_refused_on_the_public_port(server):
    r = httpx.post(
        f"{server}/v1/predict",
        content=b"\x80\x04K\x01.",
        headers={"Content-Type": "application/vnd.bentoml+pickle"},
        timeout=60,
    )
    assert r.status_code == 415


def test_model_runner_is_not_exposed_on_the_public_port(server):
    r = httpx.post(
        f"{server}/infer",
        content=b"\x80\x04K\x01.",
        headers={"Content-Type": "application/vnd.bentoml+pickle"},
        timeout=60,
    )
    assert r.status_code in (404, 405, 415)


def test_bentoml_python_client_as_documented(server):
    import bentoml

    with bentoml.SyncHTTPClient(server) as client:
        client.wait_until_server_ready(timeout=30)
        with open(ODD_IMAGES / "hopper.png", "rb") as fh:
            response = client.request("POST", "/v1/predict", files={"image": fh}, params={"top_k": 1})
    assert response.status_code == 200 and len(response.json()["top_k"]) == 1


def test_head_answers_like_get_without_a_body(server):
    """Load balancers and uptime checks probe with HEAD: FastAPI's GET routes answer it as Starlette's do."""
    for path in ("/v1/model", "/v2/health/ready", "/livez"):
        get, head = httpx.get(f"{server}{path}", timeout=60), httpx.head(f"{server}{path}", timeout=60)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-length"] == get.headers["content-length"], path
    refused = httpx.head(f"{server}/v1/predict", timeout=60)
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"


def test_wrong_method_and_unknown_route(server):
    r = httpx.get(f"{server}/v1/predict", timeout=60)
    assert r.status_code == 405 and error(r)["reason"] == "method_not_allowed"
    assert httpx.get(f"{server}/v1/nope", timeout=60).status_code == 404  # BentoML's router answers unknown paths
