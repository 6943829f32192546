"""The Open Inference Protocol (KServe v2, as Triton, KServe, MLServer and OpenVINO Model Server speak it) over HTTP:
its request and response bodies, as pure functions.

An inference request carries the encoded images as one BYTES input (shape [N]): in JSON, each image a base64
string; with the binary-data extension (an ``Inference-Header-Content-Length`` header), each image's raw bytes
after the JSON header, as 4-byte little-endian length + bytes. The answer's outputs are ``probabilities`` (FP32
[N, C], calibrated), ``label`` (BYTES [N]: the answered class) and, for a model with an OOD score, ``ood_score``
(FP32 [N]); each in JSON or, asked with ``binary_data``, as raw little-endian bytes after the JSON. The
classification extension (an output's ``classification`` parameter k) turns the output into BYTES [N, k] of
"probability:index:label", most probable first. Every problem is an ApiError whose message the endpoint answers
in the protocol's error shape, ``{"error": message}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from classifier.contract import ModelContract
from service.http.errors import ApiError, first_problem
from service.http.schemas import Prediction
from service.http.uploads import byte_count

HEADER_LENGTH = "inference-header-content-length"
INPUT = "image"
PROBABILITIES, LABEL, OOD_SCORE = "probabilities", "label", "ood_score"
EXTENSIONS = ("classification", "binary_tensor_data")


class Tensor(BaseModel):
    """An input tensor of a request: name, shape, datatype, and its data (JSON) or its binary size (parameters)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = {}


class InferenceRequest(BaseModel):
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] = {}
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None


@dataclass(frozen=True)
class Wanted:
    """One output to answer: its name, whether in binary, and the classification extension's k (0: off)."""

    name: str
    binary: bool
    classes: int = 0


@dataclass(frozen=True)
class InferCall:
    """A parsed inference request: its id, the images, and the outputs to answer."""

    id: str | None
    images: list[bytes]
    outputs: list[Wanted]


def output_names(contract: ModelContract) -> tuple[str, ...]:
    return (PROBABILITIES, LABEL, OOD_SCORE) if contract.ood is not None else (PROBABILITIES, LABEL)


def model_metadata(name: str, version: str, contract: ModelContract) -> dict[str, Any]:
    """GET /v2/models/{name}: the model's one input and its outputs."""
    outputs = [
        {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, contract.num_classes]},
        {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
    ]
    if contract.ood is not None:
        outputs.append({"name": OOD_SCORE, "datatype": "FP32", "shape": [-1]})
    return {
        "name": name,
        "versions": [version],
        "platform": "transfer-serve",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
    }


def parse_request(body: bytes, header_length: str | None, contract: ModelContract, max_images: int) -> InferCall:
    """The body of POST /v2/models/{name}/infer (``header_length``: the Inference-Header-Content-Length header,
    None for plain JSON) -> the images and the outputs wanted; ApiError 400 naming the first problem."""
    json_part, binary = _split(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(json_part)
    except ValidationError as exc:
        raise _bad(f"the request is not a valid inference request: {first_problem(exc.errors())}") from None
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = [tensor.name for tensor in request.inputs]
        raise _bad(f"the model takes one input named {INPUT!r} (BYTES, the encoded images); got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise _bad(f"input {INPUT!r} must be BYTES (encoded images), not {tensor.datatype}")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) or tensor.shape[0] < 1:
        raise _bad(f"input {INPUT!r} must have shape [N] (or [N, 1]), N >= 1; got {tensor.shape}")
    count = tensor.shape[0]
    if count > max_images:
        raise ApiError(400, "too_many_images", f"{count} images in one request; at most {max_images}")
    if "binary_data_size" in tensor.parameters:
        images = _binary_images(tensor, binary, count)
    else:
        images = _json_images(tensor, count)
    if binary and "binary_data_size" not in tensor.parameters:
        raise _bad("the request has binary data after its JSON header, but no input declares binary_data_size")
    if len(images) != count:
        raise _bad(f"input {INPUT!r} declares shape {tensor.shape} but holds {len(images)} elements")
    return InferCall(request.id, images, _wanted(request, contract))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if (length := byte_count(header_length)) is None:
        raise _bad(f"Inference-Header-Content-Length {header_length[:20]!r} is not a number")
    if not 0 < length <= len(body):
        raise _bad(f"Inference-Header-Content-Length {length} does not fit the {len(body)}-byte body")
    return body[:length], body[length:]


def _json_images(tensor: Tensor, count: int) -> list[bytes]:
    """JSON BYTES elements are strings: here each is an image, base64-encoded (JSON cannot carry raw bytes)."""
    data = tensor.data
    if isinstance(data, list) and all(isinstance(row, list) and len(row) == 1 for row in data):
        data = [row[0] for row in data]  # shape [N, 1], nested
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise _bad(f"input {INPUT!r}'s data must be a list of base64 strings (or send it as binary data)")
    if len(data) != count:
        raise _bad(f"input {INPUT!r} declares shape {tensor.shape} but holds {len(data)} elements")
    try:
        return [base64.b64decode(item, validate=True) for item in data]
    except (binascii.Error, ValueError):
        raise _bad(f"input {INPUT!r}: an element is not valid base64") from None


def _binary_images(tensor: Tensor, binary: bytes, count: int) -> list[bytes]:
    """The binary-data extension's BYTES: each element a 4-byte little-endian length, then that many bytes."""
    size = tensor.parameters["binary_data_size"]
    if tensor.data is not None:
        raise _bad(f"input {INPUT!r} has both data and binary_data_size: send its elements one way")
    if not isinstance(size, int) or size != len(binary):
        raise _bad(f"input {INPUT!r}: binary_data_size {size!r} does not match the {len(binary)} bytes sent")
    images: list[bytes] = []
    offset = 0
    while offset < len(binary):
        if len(images) == count:  # more elements than the shape says: stop before making more of them
            raise _bad(f"input {INPUT!r} declares shape {tensor.shape} but holds more elements")
        if offset + 4 > len(binary):
            raise _bad(f"input {INPUT!r}: binary data ends inside an element's length")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise _bad(f"input {INPUT!r}: an element of {length} bytes runs past the end of the data")
        images.append(binary[offset : offset + length])
        offset += length
    return images


def _wanted(request: InferenceRequest, contract: ModelContract) -> list[Wanted]:
    all_binary = request.parameters.get("binary_data_output", False)
    if not isinstance(all_binary, bool):
        raise _bad(f"parameter binary_data_output must be true or false, not {all_binary!r}")
    names = output_names(contract)
    if request.outputs is None:
        return [Wanted(name, all_binary) for name in names]
    wanted = []
    for output in request.outputs:
        if output.name not in names:
            raise _bad(f"unknown output {output.name!r}; the model's outputs are {list(names)}")
        classes = output.parameters.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise _bad(f"output {output.name!r}: classification must be a whole number >= 0, not {classes!r}")
        if classes and output.name != PROBABILITIES:
            raise _bad(f"classification applies to output {PROBABILITIES!r}, not {output.name!r}")
        binary = output.parameters.get("binary_data", all_binary)
        if not isinstance(binary, bool):
            raise _bad(f"output {output.name!r}: binary_data must be true or false, not {binary!r}")
        wanted.append(Wanted(output.name, binary, min(classes, contract.num_classes)))
    return wanted


def encode_response(
    call: InferCall,
    outputs: np.ndarray,
    predictions: list[Prediction],
    *,
    name: str,
    version: str,
    contract: ModelContract,
) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers: ``outputs`` is the serving graph's [N, output_width] (probabilities, then the
    OOD score), ``predictions`` the service's answers (their labels)."""
    tensors, blobs = [], []
    for want in call.outputs:
        datatype, shape, values = _tensor(want, outputs, predictions, contract)
        tensor: dict[str, Any] = {"name": want.name, "datatype": datatype, "shape": shape}
        if want.binary:
            blob = _to_binary(datatype, values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values.reshape(-1).tolist() if datatype == "FP32" else list(values.reshape(-1))
        tensors.append(tensor)
    head: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": tensors}
    if call.id is not None:
        head["id"] = call.id
    header = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(blobs), headers


def _tensor(
    want: Wanted, outputs: np.ndarray, predictions: list[Prediction], contract: ModelContract
) -> tuple[str, list[int], np.ndarray]:
    n, classes = len(predictions), contract.num_classes
    if want.name == LABEL:
        return "BYTES", [n], np.array([p.label for p in predictions], dtype=object)
    if want.name == OOD_SCORE:
        return "FP32", [n], outputs[:, classes].astype(np.float32)
    probs = outputs[:, :classes].astype(np.float32)
    if not want.classes:
        return "FP32", [n, classes], probs
    order = np.argsort(-probs, axis=1, kind="stable")[:, : want.classes]
    names = contract.class_names
    rows = [[f"{probs[i, j]:.6f}:{j}:{names[j]}" for j in order[i]] for i in range(n)]
    return "BYTES", [n, want.classes], np.array(rows, dtype=object)


def _to_binary(datatype: str, values: np.ndarray) -> bytes:
    if datatype == "FP32":
        return np.ascontiguousarray(values, dtype="<f4").tobytes()
    parts = []
    for item in values.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_inference_request", message)
