"""OpenVINO on the CPU on the INT8 graph (model.int8.onnx): see classifier/engines/openvino_engine.py."""

from __future__ import annotations

from classifier.engines import BuildRequest
from classifier.engines.openvino_engine import OpenVinoEngine, open_engine


def build(request: BuildRequest) -> OpenVinoEngine:
    return open_engine(request, "openvino-int8", "onnx-int8")
