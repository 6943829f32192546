"""The Open Inference Protocol at /v2, spoken by a real client (tritonclient's HTTP client) and by raw requests,
against the real server: the same answers as /v1, both input encodings, the classification extension, and a 4xx
in the protocol's error shape for every bad request."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from loadtests.servers import REPO
from loadtests.traffic import photo_files
from tests.integration.test_service import HOPPER, metrics_text, post_one

PHOTO = photo_files(REPO / "loadtests" / "photos")[0].read_bytes()  # a real 500x375 JPEG


@pytest.fixture(scope="module")
def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=120)


def _images(datas: list[bytes], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(datas)], "BYTES")
    values = datas if binary else [base64.b64encode(d).decode() for d in datas]
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return tensor


def _v1_probabilities(server: str, data: bytes, class_names: list[str]) -> tuple[str, list[float]]:
    answer = post_one(server, data, top_k=len(class_names)).json()
    scores = {s["label"]: s["probability"] for s in answer["top_k"]}
    return answer["label"], [scores[name] for name in class_names]


def test_health_and_metadata(client, trained_model):
    name, version = trained_model.split(":")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, version)
    assert not client.is_model_ready("no-such-model")
    server = client.get_server_metadata()
    assert server["name"] == "transfer-serve" and set(server["extensions"]) >= {"classification", "binary_tensor_data"}
    model = client.get_model_metadata(name, version)
    assert (model["name"], model["versions"]) == (name, [version])
    assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
        ("probabilities", "FP32", [-1, 2]),
        ("label", "BYTES", [-1]),
        ("ood_score", "FP32", [-1]),
    ]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-data", "json-base64"])
def test_tritonclient_classifies_real_photos_as_v1_does(server, client, trained_model, binary):
    name = trained_model.split(":")[0]
    class_names = httpx.get(f"{server}/v1/model", timeout=30).json()["class_names"]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label", "ood_score")]
    result = client.infer(name, [_images([PHOTO, HOPPER], binary=binary)], outputs=outputs, request_id="req-1")
    response = result.get_response()
    assert response["id"] == "req-1" and response["model_version"] == trained_model.split(":")[1]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 2) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert result.as_numpy("ood_score").shape == (2,)
    for i, data in enumerate([PHOTO, HOPPER]):  # the same model, preprocessing and calibration as /v1
        label, expected = _v1_probabilities(server, data, class_names)
        assert labels[i] == label and np.allclose(probabilities[i], expected, atol=2e-6)


def test_classification_extension(server, client, trained_model):
    name = trained_model.split(":")[0]
    class_names = httpx.get(f"{server}/v1/model", timeout=30).json()["class_names"]
    wanted = [triton.InferRequestedOutput("probabilities", binary_data=True, class_count=1)]
    result = client.infer(name, [_images([PHOTO], binary=True)], outputs=wanted)
    ((top,),) = result.as_numpy("probabilities")
    value, index, label = top.decode().split(":")
    expected_label, expected = _v1_probabilities(server, PHOTO, class_names)
    assert (label, int(index)) == (expected_label, class_names.index(expected_label))
    assert float(value) == pytest.approx(max(expected), abs=1e-5)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]  # only what was asked


def test_raw_json_request_and_the_request_id(server, trained_model):
    name = trained_model.split(":")[0]
    body = {
        "id": "abc",
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(PHOTO).decode()]}],
        "outputs": [{"name": "label"}, {"name": "probabilities", "parameters": {"classification": 2}}],
    }
    r = httpx.post(f"{server}/v2/models/{name}/infer", json=body, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    answer = r.json()
    assert answer["id"] == "abc" and r.headers["x-request-id"]
    label, ranked = answer["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [1], "data": [label["data"][0]]}
    assert ranked["shape"] == [1, 2] and ranked["data"][0].endswith(f":{label['data'][0]}")
    # the answer can be fed back through /v1/feedback by its request id
    feedback = {"request_id": r.headers["x-request-id"], "index": 0, "label": label["data"][0]}
    assert httpx.post(f"{server}/v1/feedback", json=feedback, timeout=30).status_code == 200


def _binary_body(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    data = b"".join(struct.pack("<I", len(d)) + d for d in images)
    head = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(images)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    }
    encoded = json.dumps(head).encode()
    return encoded + data, {"Inference-Header-Content-Length": str(len(encoded))}


def _input(**change) -> dict:
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(HOPPER).decode()]}
    return {"inputs": [{**tensor, **change}]}


BAD_REQUESTS = {
    "wrong datatype": (_input(datatype="UINT8", data=[1, 2, 3]), 400, "must be BYTES"),
    "wrong shape": (_input(shape=[2]), 400, "holds 1 elements"),
    "shape of a tensor": (_input(shape=[1, 3, 224, 224]), 400, "must have shape [N]"),
    "wrong input name": (_input(name="images"), 400, "one input named 'image'"),
    "not base64": (_input(data=["not base64!"]), 400, "not valid base64"),
    "not an image": (_input(data=[base64.b64encode(b"hello").decode()]), 400, "image 0: "),
    "unknown output": ({**_input(), "outputs": [{"name": "logits"}]}, 400, "unknown output 'logits'"),
    "bad classification": (
        {**_input(), "outputs": [{"name": "label", "parameters": {"classification": 2}}]},
        400,
        "classification applies to output 'probabilities'",
    ),
    "too many images": (_input(shape=[13], data=[base64.b64encode(HOPPER).decode()] * 13), 400, "at most 12"),
    "not JSON": (b"{not json", 400, "not a valid inference request"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_in_the_protocols_error_shape(server, trained_model, case):
    body, status, message = BAD_REQUESTS[case]
    name = trained_model.split(":")[0]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server}/v2/models/{name}/infer", content=content, timeout=60)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and message in r.json()["error"]


def test_bad_binary_requests_and_unknown_models(server, trained_model):
    name, version = trained_model.split(":")
    url = f"{server}/v2/models/{name}/infer"
    body, headers = _binary_body([HOPPER])
    assert httpx.post(url, content=body, headers=headers, timeout=60).status_code == 200
    short = httpx.post(url, content=body[:-10], headers=headers, timeout=60)
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
    beyond = httpx.post(url, content=body, headers={"Inference-Header-Content-Length": "999999999"}, timeout=60)
    assert beyond.status_code == 400 and "does not fit" in beyond.json()["error"]
    oversize = httpx.post(url, content=b"x" * (2 * 1024 * 1024 + 1), timeout=60)
    assert oversize.status_code == 413 and "over the limit" in oversize.json()["error"]
    for path in ("/v2/models/nope/infer", f"/v2/models/{name}/versions/0/infer"):
        r = httpx.post(f"{server}{path}", content=body, headers=headers, timeout=60)
        assert r.status_code == 404 and f"serves {name} version {version}" in r.json()["error"]
    assert httpx.get(f"{server}/v2/models/{name}/infer", timeout=30).status_code == 405


def test_tritonclient_sees_the_errors(client, trained_model):
    with pytest.raises(InferenceServerException, match="no model 'nope'") as unknown:
        client.infer("nope", [_images([HOPPER], binary=True)])
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException, match="image 1: ") as bad:
        client.infer(trained_model.split(":")[0], [_images([HOPPER, b"GIF89a broken"], binary=True)])
    assert bad.value.status() == "400"


def test_v2_requests_count_in_the_services_metrics(server, client, trained_model):
    def classified(text: str) -> float:
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("image_classifier_predictions_total")
        )

    before = classified(metrics_text(server))
    client.infer(trained_model.split(":")[0], [_images([PHOTO, PHOTO, HOPPER], binary=True)])
    assert classified(metrics_text(server)) == before + 3
