"""ONNX Runtime on the CPU, fp32: the graph training exports, uint8 images in, probabilities (and OOD score) out.

The exported graph is the whole serving network (classifier.network.ServingNet): scaling, normalisation
and softmax run inside it, so this engine only feeds it batches. The same session class serves the INT8
copy (classifier/engines/ort_int8.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from classifier.contract import ModelContract
from classifier.engines import BuildRequest, EngineError, ExportRequest

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "scores"  # graphs exported before OOD detection named it "probabilities"; either is read


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
    """An ONNX Runtime session on the CPU provider; ``name`` is the registry's ("onnx", "onnx-int8")."""

    def __init__(self, path: str | Path, contract: ModelContract, *, threads: int, name: str = "onnx") -> None:
        self.name, self.device, self.contract = name, "cpu", contract
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidProtobuf, NoSuchFile, ...)
            raise EngineError(f"cannot load {path} ({str(exc).strip().splitlines()[0]})") from None
        (graph_input, *more), size = self.session.get_inputs(), contract.image_size
        if more or graph_input.name != INPUT_NAME or graph_input.shape[1:] != [3, size, size]:
            raise EngineError(
                f"{path} takes {[(i.name, i.shape) for i in self.session.get_inputs()]}, "
                f"not {INPUT_NAME} [N, 3, {size}, {size}]"
            )
        if graph_input.type != "tensor(uint8)":  # written by a version that normalised outside the graph
            raise EngineError(
                f"{path} takes {graph_input.type}, not uint8 images: it was exported by an older version of "
                "this project, which normalised outside the graph"
            )
        (graph_output, *_) = self.session.get_outputs()
        self.output = graph_output.name
        if isinstance(graph_output.shape[1], int) and graph_output.shape[1] != contract.output_width:
            raise EngineError(
                f"{path} outputs {graph_output.shape[1]} columns, but its contract describes {contract.output_width}: "
                "the graph and the contract come from different training runs"
            )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, S, S] (numpy, or a CPU tensor) -> float32 [N, contract.output_width]."""
        return self.session.run([self.output], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.uint8)})[0]

    def warm_up(self, batch_size: int = 1) -> None:
        """One inference so the first request does not pay for lazy initialisation."""
        size = self.contract.image_size
        self.predict(np.zeros((batch_size, 3, size, size), dtype=np.uint8))


def open_engine(request: BuildRequest, name: str) -> OnnxEngine:
    """The session for engine ``name``'s file in the model folder; EngineError naming the fix if it fails."""
    try:
        return OnnxEngine(request.model.engine_files[name], request.model.contract, threads=request.threads, name=name)
    except EngineError as exc:
        raise EngineError(f"model {request.model.tag}: {exc}; retrain it or set CLASSIFIER_ENGINE=torch") from None


def build(request: BuildRequest) -> OnnxEngine:
    return open_engine(request, "onnx")


def load(path: Path | str, contract: ModelContract, threads: int) -> OnnxEngine:
    return OnnxEngine(path, contract, threads=threads, name="onnx")


def export(request: ExportRequest) -> Path:
    """Write the serving network (uint8 in, probabilities and OOD score out) as an ONNX graph with a dynamic batch
    dimension. Moves the network to the CPU in float32 and eval mode, in place (training is over when this runs)."""
    import torch

    from classifier.network import ServingNet

    path, size = request.workdir / "model.onnx", request.contract.image_size
    serving = ServingNet(request.network.to("cpu", torch.float32), request.contract).eval()
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # the exporter prints its progress
        torch.onnx.export(
            serving,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: batch}},
        )
    logger.debug("ONNX export: %s", chatter.getvalue().strip())
    return path
