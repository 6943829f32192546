"""The Open Inference Protocol's bodies (service/http/oip.py), without a server."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from classifier.contract import OodContract
from service.http import oip
from service.http.errors import ApiError
from service.http.schemas import Prediction


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def _binary_request(images: list[bytes], **request) -> tuple[bytes, str]:
    data = _bytes_tensor(images)
    tensor = {
        "name": "image",
        "shape": [len(images)],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(data)},
    }
    head = json.dumps({"inputs": [tensor], **request}).encode()
    return head + data, str(len(head))


def test_binary_and_json_inputs_give_the_same_images(contract):
    images = [b"\xff\xd8first", b"", b"\x00third\x00"]
    body, length = _binary_request(images)
    assert oip.parse_request(body, length, contract, max_images=10).images == images
    encoded = [base64.b64encode(x).decode() for x in images]
    for data, shape in ((encoded, [3]), ([[x] for x in encoded], [3, 1])):  # [N] and [N, 1]
        request = {"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES", "data": data}]}
        assert oip.parse_request(json.dumps(request).encode(), None, contract, max_images=10).images == images


def test_outputs_default_to_all_and_binary_data_output_applies_to_each(contract):
    body, length = _binary_request([b"x"], parameters={"binary_data_output": True})
    wanted = oip.parse_request(body, length, contract, max_images=1).outputs
    assert wanted == [oip.Wanted("probabilities", True), oip.Wanted("label", True)]  # no OOD score in this model
    body, length = _binary_request([b"x"], outputs=[{"name": "probabilities", "parameters": {"classification": 9}}])
    assert oip.parse_request(body, length, contract, max_images=1).outputs == [oip.Wanted("probabilities", False, 2)]


def _raw(head: dict, data: bytes) -> tuple[bytes, str]:
    encoded = json.dumps(head).encode()
    return encoded + data, str(len(encoded))


def _declaring(size: int) -> dict:
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]}


ELEMENT = struct.pack("<I", 6) + b"abcdef"
_JSON_INPUT = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}]}
BROKEN = {
    "size mismatch": (*_raw(_declaring(99), ELEMENT), "does not match the 10 bytes"),
    "element past the end": (*_raw(_declaring(8), ELEMENT[:8]), "runs past the end"),
    "length cut short": (*_raw(_declaring(2), ELEMENT[:2]), "ends inside an element's length"),
    "header length not a number": (_raw(_declaring(10), ELEMENT)[0], " +12", "is not a number"),
    "header length a superscript digit": (_raw(_declaring(10), ELEMENT)[0], "\u00b2", "is not a number"),
    "header length of 5000 digits": (_raw(_declaring(10), ELEMENT)[0], "1" * 5000, "is not a number"),
    "more elements than the shape": (*_raw(_declaring(20), ELEMENT * 2), "holds more elements"),
    "header length zero": (_raw(_declaring(10), ELEMENT)[0], "0", "does not fit"),
    "binary but undeclared": (*_raw(_JSON_INPUT, ELEMENT), "no input declares binary_data_size"),
    "data and binary_data_size": (
        *_raw({"inputs": [{**_JSON_INPUT["inputs"][0], "parameters": {"binary_data_size": 10}}]}, ELEMENT),
        "has both data and binary_data_size",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_binary_requests_name_the_problem(contract, case):
    body, length, message = BROKEN[case]
    with pytest.raises(ApiError) as refused:
        oip.parse_request(body, length, contract, max_images=4)
    assert refused.value.status == 400 and message in refused.value.message


def _prediction(label: str) -> Prediction:
    return Prediction(label=label, probability=0.7, top_k=[])


def test_responses_in_json_and_binary(contract):
    contract = contract.model_copy(update={"ood": OodContract(dims=4, threshold=1.0, accept_rate=0.95)})
    outputs = np.array([[0.25, 0.75, 1.5], [0.9, 0.1, 0.2]], dtype=np.float32)
    predictions = [_prediction(contract.class_names[1]), _prediction("unknown")]
    wanted = [oip.Wanted("probabilities", True), oip.Wanted("label", True), oip.Wanted("ood_score", False)]
    body, headers = oip.encode_response(
        oip.InferCall("r1", [], wanted), outputs, predictions, name="m", version="v", contract=contract
    )
    length = int(headers[oip.HEADER_LENGTH])
    head, data = json.loads(body[:length]), body[length:]
    assert (head["id"], head["model_name"], head["model_version"]) == ("r1", "m", "v")
    probs, labels, ood = head["outputs"]
    assert probs["shape"] == [2, 2] and probs["parameters"]["binary_data_size"] == 16
    assert np.array_equal(np.frombuffer(data[:16], "<f4").reshape(2, 2), outputs[:, :2])
    assert data[16:] == _bytes_tensor([contract.class_names[1].encode(), b"unknown"])
    assert ood == {"name": "ood_score", "datatype": "FP32", "shape": [2], "data": [1.5, 0.20000000298023224]}


def test_classification_ranks_classes(contract):
    outputs = np.array([[0.25, 0.75]], dtype=np.float32)
    wanted = [oip.Wanted("probabilities", False, 2)]
    body, headers = oip.encode_response(
        oip.InferCall(None, [], wanted), outputs, [_prediction("x")], name="m", version="v", contract=contract
    )
    (tensor,) = json.loads(body)["outputs"]
    a, b = contract.class_names
    assert headers["content-type"] == "application/json" and "id" not in json.loads(body)
    assert tensor == {
        "name": "probabilities",
        "datatype": "BYTES",
        "shape": [1, 2],
        "data": [f"0.750000:1:{b}", f"0.250000:0:{a}"],
    }


@pytest.mark.parametrize(
    "parameters, outputs",
    [({"binary_data_output": "false"}, None), ({}, [{"name": "label", "parameters": {"binary_data": 1}}])],
)
def test_binary_output_flags_must_be_booleans(contract, parameters, outputs):
    body, length = _binary_request([b"x"], parameters=parameters, outputs=outputs)
    with pytest.raises(ApiError, match="must be true or false"):
        oip.parse_request(body, length, contract, max_images=1)
