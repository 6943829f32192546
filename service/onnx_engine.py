"""ONNX Runtime inference on the CPU: uint8 image batches in, class probabilities out.

The graph (written by training) takes normalised float32 [N, 3, S, S] and returns logits; scaling,
normalisation and softmax run here as whole-batch numpy operations. The same class serves the
fp32 graph and the INT8 (statically quantized, QDQ) one.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from service.contract import ModelContract

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


class OnnxEngineError(RuntimeError):
    """The ONNX file cannot be loaded (missing, corrupt, or not the graph training writes)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)


def session_options(threads: int) -> ort.SessionOptions:
    """One intra-op pool of ``threads`` (the worker's share of the cores), sequential execution."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's info lines would flood the server log
    # Idle pool threads sleep instead of spinning: in a server the cores are shared with decoding and
    # HTTP, and spinning threads burn the CPU time those need between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxEngine:
    """An ONNX Runtime session on the CPU provider; ``name`` is "onnx" or "onnx-int8"."""

    def __init__(self, path: str, contract: ModelContract, *, threads: int, name: str = "onnx") -> None:
        self.name = name
        self.device = "cpu"
        self.contract = contract
        try:
            self.session = ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidProtobuf, NoSuchFile, ...)
            raise OnnxEngineError(f"cannot load {path} ({str(exc).strip().splitlines()[0]})") from None
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].shape[1:] != [3, contract.image_size, contract.image_size]:
            raise OnnxEngineError(f"{path} takes {[(i.name, i.shape) for i in inputs]}, "
                                  f"not {INPUT_NAME} [N, 3, {contract.image_size}, {contract.image_size}]")
        std = np.asarray(contract.std, dtype=np.float32).reshape(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._offset = np.asarray(contract.mean, dtype=np.float32).reshape(1, 3, 1, 1) / std

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, S, S] (numpy, or a CPU tensor) -> float32 (x / 255 - mean) / std, in one pass."""
        out = np.asarray(batch).astype(np.float32)
        out *= self._scale
        out -= self._offset
        return out

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, S, S] -> float32 logits [N, C]."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: self.normalize(batch)})[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, S, S] -> float32 probabilities [N, C]."""
        return softmax(self.logits(batch))

    def warm_up(self, batch_size: int = 1) -> None:
        """One inference so the first request does not pay for lazy initialisation."""
        size = self.contract.image_size
        self.predict(np.zeros((batch_size, 3, size, size), dtype=np.uint8))
