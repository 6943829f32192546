"""OpenVINO on the CPU, on the graphs training already saves: ``openvino`` runs model.onnx, ``openvino-int8``
model.int8.onnx. Neither has a file of its own.

OpenVINO picks the precision the CPU runs best unless told otherwise: bf16 on a CPU with AMX for the fp32
graph, int8 kernels (VNNI, AMX) for the quantized one. One stream with the worker's share of the cores
matches how the service calls it (one batch at a time per worker). With a cache folder, the compiled model
is written there and a restart loads it instead of compiling again.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import openvino as ov

from classifier.contract import ModelContract
from classifier.engines import BuildRequest, EngineError

logger = logging.getLogger(__name__)


class OpenVinoEngine:
    """A model compiled for OpenVINO's CPU plugin; ``name`` is the registry's ("openvino", "openvino-int8")."""

    def __init__(
        self, path: str | Path, contract: ModelContract, *, threads: int, name: str, cache_dir: Path | None = None
    ) -> None:
        self.name, self.device, self.contract = name, "cpu", contract
        core = ov.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        # No pinning: with several model workers each would pin its threads to the same first cores.
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for a missing or foreign file
            raise EngineError(f"cannot load {path} with OpenVINO ({str(exc).strip().splitlines()[0]})") from None
        (graph_input, *more), size = self.compiled.inputs, contract.image_size
        if (
            more
            or graph_input.get_element_type() != ov.Type.u8
            or graph_input.get_partial_shape()[1:].to_string() != (f"[3,{size},{size}]")
        ):
            raise EngineError(
                f"{path} takes {[(i.get_any_name(), str(i.get_partial_shape())) for i in self.compiled.inputs]} "
                f"({graph_input.get_element_type()}), not uint8 images [N, 3, {size}, {size}]"
            )
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # bf16 with AMX
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one infer request, reused: its output buffer is copied before it is let go
        logger.info("%s: compiled %s for the CPU, %s, %d threads", name, Path(path).name, self.precision, threads)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, S, S] (numpy, or a CPU tensor) -> float32 [N, contract.output_width]."""
        images = np.ascontiguousarray(batch, dtype=np.uint8)
        with self.lock:
            result = self.request.infer({0: images})
            return np.array(result[0], dtype=np.float32)  # a copy: the request owns its output buffer

    def warm_up(self, batch_size: int = 1) -> None:
        """One inference so the first request does not pay for lazy initialisation."""
        size = self.contract.image_size
        self.predict(np.zeros((batch_size, 3, size, size), dtype=np.uint8))


def open_engine(request: BuildRequest, name: str, graph: str) -> OpenVinoEngine:
    """OpenVINO on the file of engine ``graph`` in the model folder; EngineError naming the fix if it fails."""
    try:
        return OpenVinoEngine(
            request.model.engine_files[graph],
            request.model.contract,
            threads=request.threads,
            name=name,
            cache_dir=_writable(request.cache_dir / "openvino") if request.cache_dir is not None else None,
        )
    except EngineError as exc:
        raise EngineError(f"model {request.model.tag}: {exc}; retrain it or choose another engine") from None


def _writable(folder: Path) -> Path | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("cannot cache compiled models in %s (%s): each start compiles again", folder, exc)
        return None
    return folder if os.access(folder, os.W_OK) else None


def build(request: BuildRequest) -> OpenVinoEngine:
    return open_engine(request, "openvino", "onnx")
