"""The ONNX Runtime engines of a trained network: an fp32 graph, and a statically quantized INT8 copy.

Both take normalised float32 [N, 3, S, S] (any N) and return logits, as service.onnx_engine expects.
INT8: post-training static quantization (QDQ, per-channel int8 weights, uint8 activations) with
ranges calibrated on training images, then checked against fp32 on the test split. Everything after
the last convolution (pooling and the head) stays fp32: the head has the feature standardisation
folded in, so it divides by each feature's spread across images and would amplify the quantization
error of its input (measured with a random-init backbone on 397 real photos: 61% top-1 agreement
with fp32 with the head quantized, 92% without, at the same speed).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

from service.architecture import Classifier
from service.contract import ModelContract
from service.onnx_engine import INPUT_NAME, OUTPUT_NAME, OnnxEngine
from service.preprocessing import prepare_image
from training.data import TRAINING_MAX_PIXELS

logger = logging.getLogger(__name__)

CALIBRATION_BATCH = 16


def export_onnx(network: Classifier, contract: ModelContract, path: Path) -> Path:
    """Write ``network`` as an ONNX graph with a dynamic batch dimension. Moves ``network`` to the CPU in
    float32 and eval mode, in place (training is over when this runs)."""
    network = network.to("cpu", torch.float32).eval()
    example = torch.zeros(2, 3, contract.image_size, contract.image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # the exporter prints its progress
        torch.onnx.export(network, (example,), str(path), dynamo=True, external_data=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: batch}})
    logger.debug("ONNX export: %s", chatter.getvalue().strip())
    return path


class _Calibration(CalibrationDataReader):
    """Feeds normalised calibration batches to the quantizer."""

    def __init__(self, images: np.ndarray, engine: OnnxEngine) -> None:
        self._batches = iter([engine.normalize(images[i:i + CALIBRATION_BATCH])
                              for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, contract: ModelContract) -> Path:
    """Quantize the fp32 graph statically, calibrating on uint8 images [N, 3, S, S]."""
    prepared = int8_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    reader = _Calibration(calibration, OnnxEngine(str(fp32_path), contract, threads=1))
    quantize_static(str(prepared), str(int8_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    nodes_to_exclude=nodes_after_last_conv(prepared))
    prepared.unlink()
    return int8_path


def nodes_after_last_conv(path: Path) -> list[str]:
    """Names of the graph's nodes after its last Conv (in graph order, which ONNX keeps topological)."""
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    last = max((i for i, node in enumerate(nodes) if node.op_type == "Conv"), default=len(nodes) - 1)
    return [node.name for node in nodes[last + 1:]]


def compare_engines(torch_probs: np.ndarray, fp32: OnnxEngine, int8: OnnxEngine | None, images: np.ndarray,
                    labels: np.ndarray) -> dict[str, Any]:
    """Accuracy and top-1 agreement of the ONNX engines against PyTorch on the same images, and INT8's speed-up.

    ``torch_probs`` are the PyTorch network's probabilities for ``images`` (uint8 [N, 3, S, S]).
    """
    report: dict[str, Any] = {"images": len(images), "torch_accuracy": _accuracy(torch_probs, labels)}
    fp32_probs = predict_in_batches(fp32, images)
    report["onnx"] = {"accuracy": _accuracy(fp32_probs, labels), "top1_agreement_with_torch": _agreement(fp32_probs, torch_probs),
                      "max_abs_probability_diff": float(np.abs(fp32_probs - torch_probs).max()) if len(images) else 0.0}
    if int8 is not None:
        int8_probs = predict_in_batches(int8, images)
        accuracy = _accuracy(int8_probs, labels)
        report["onnx-int8"] = {
            "accuracy": accuracy, "accuracy_change": accuracy - report["onnx"]["accuracy"],
            "top1_agreement_with_fp32": _agreement(int8_probs, fp32_probs),
            "speedup_vs_fp32": _speedup(int8, fp32, images),
        }
    return report


def predict_in_batches(engine, images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> np.ndarray:
    """``engine.predict`` over ``images`` (uint8 [N, 3, S, S]) in batches: probabilities [N, C]."""
    if not len(images):
        return np.zeros((0, engine.contract.num_classes), np.float32)
    return np.concatenate([engine.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else 1.0


def _speedup(engine: OnnxEngine, baseline: OnnxEngine, images: np.ndarray, repeats: int = 3) -> float:
    """How many times faster ``engine`` runs one batch of up to 16 images than ``baseline``: best of a few
    runs of each, interleaved so both see the same machine load."""
    batch = images[:CALIBRATION_BATCH]
    if not len(batch):
        return 0.0
    engine.predict(batch), baseline.predict(batch)
    times = [(_timed(engine, batch), _timed(baseline, batch)) for _ in range(repeats)]
    return min(b for _, b in times) / min(e for e, _ in times)


def _timed(engine: OnnxEngine, batch: np.ndarray) -> float:
    start = time.perf_counter()
    engine.predict(batch)
    return time.perf_counter() - start


def build_onnx_engines(
    network: Classifier, contract: ModelContract, workdir: Path, *, int8: bool, calibration: list[Path],
    test: list[Path], test_probs: np.ndarray, test_labels: np.ndarray,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Export fp32 (and, if ``int8``, quantize it on the ``calibration`` images), then compare the engines
    with PyTorch's ``test_probs`` on the ``test`` images. Returns {engine name: file} and the comparison."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = {"onnx": export_onnx(network, contract, workdir / "model.onnx")}
    if int8:
        logger.info("quantizing to INT8 with %d calibration images", len(calibration))
        files["onnx-int8"] = quantize_int8(files["onnx"], workdir / "model.int8.onnx", _load(calibration, contract), contract)
    engines = {name: OnnxEngine(str(path), contract, threads=torch.get_num_threads(), name=name) for name, path in files.items()}
    report = compare_engines(test_probs, engines["onnx"], engines.get("onnx-int8"), _load(test, contract), test_labels)
    if "onnx-int8" in report:
        q = report["onnx-int8"]
        logger.info("INT8 on %d test images: accuracy %+.3f, top-1 agreement with fp32 %.3f, %.1fx fp32's speed",
                    len(test), q["accuracy_change"], q["top1_agreement_with_fp32"], q["speedup_vs_fp32"])
    return files, report


def _load(paths: list[Path], contract: ModelContract) -> np.ndarray:
    """Images preprocessed exactly as the service does, as uint8 [N, 3, S, S]."""
    size = contract.image_size
    if not paths:
        return np.zeros((0, 3, size, size), np.uint8)
    return np.stack([prepare_image(p.read_bytes(), contract, max_pixels=TRAINING_MAX_PIXELS).numpy() for p in paths])
