"""ONNX Runtime on the CPU, INT8: a statically quantized copy of the fp32 graph (classifier/engines/ort_engine.py).

Post-training static quantization (QDQ, per-channel int8 weights, uint8 activations) with ranges
calibrated on training images. Everything after the last convolution (pooling, the head and softmax)
stays fp32: the head has the feature standardisation folded in, so it divides by each feature's spread
across images and would amplify the quantization error of its input (docs/decisions.md has the
measurement). Training then checks the graph against fp32 on the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from classifier.contract import ModelContract
from classifier.engines import BuildRequest, ExportRequest
from classifier.engines.ort_engine import INPUT_NAME, OnnxEngine, open_engine

CALIBRATION_BATCH = 16


def build(request: BuildRequest) -> OnnxEngine:
    return open_engine(request, "onnx-int8")


def load(path: Path | str, contract: ModelContract, threads: int) -> OnnxEngine:
    return OnnxEngine(path, contract, threads=threads, name="onnx-int8")


# Exporting needs onnx and ONNX Runtime's quantizer, which training installs and a serving image need not:
# they are imported by the functions below, never when the engine is built.


def export(request: ExportRequest) -> Path:
    """Quantize the exported fp32 graph statically, calibrating on ``request.calibration``."""
    return quantize_int8(request.exported["onnx"], request.workdir / "model.int8.onnx", request.calibration)


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> Path:
    """Quantize the fp32 graph at ``fp32_path`` statically, calibrating on uint8 images [N, 3, S, S]. The
    normalisation before the first Conv and everything after the last stay fp32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    prepared = int8_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(int8_path),
        _calibration(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        nodes_to_exclude=nodes_outside_the_convolutions(prepared),
    )
    prepared.unlink()
    return int8_path


def _calibration(images: np.ndarray) -> Any:
    """A reader that feeds uint8 calibration batches to the quantizer, as the engines get them."""
    from onnxruntime.quantization import CalibrationDataReader

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return Calibration()


def nodes_outside_the_convolutions(path: Path) -> list[str]:
    """Names of the graph's nodes before its first Conv (the normalisation: quantizing it would quantize the
    input twice) and after its last (see the module's docstring)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    convs = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
    first, last = (convs[0], convs[-1]) if convs else (0, len(nodes) - 1)
    return [node.name for node in [*nodes[:first], *nodes[last + 1 :]]]
