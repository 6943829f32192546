"""The engines saved with a trained network, exported through the registry and checked against PyTorch.

Each engine in ``--export`` runs its registry export step (classifier/engines/), in dependency order,
then every exported engine is run on the test split: its accuracy, its top-1 agreement with PyTorch
(and, for engines built on the fp32 graph, with that graph, plus its speed relative to it). The figures
go into the model's metadata, where the service reads them to warn about an engine that disagrees.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classifier.contract import ModelContract
from classifier.engines import ENGINES, Engine, ExportRequest, on_pytorch_scale
from classifier.network import ClassifierNet, ServingNet
from classifier.preprocessing import prepare_image
from training.data import TRAINING_MAX_PIXELS

logger = logging.getLogger(__name__)

BATCH = 16
SAME_SCALE = 0.01  # an engine whose OOD scores are within 1% of PyTorch's keeps them as they are (fp32 graphs)
HALF_PRECISIONS = (torch.bfloat16, torch.float16)  # what the torch engine runs on a GPU
HALF_SCALE_IMAGES = 64  # validation images the half-precision scales are measured on (fp16 is slow on a CPU)


def export_engines(
    network: ClassifierNet, contract: ModelContract, workdir: Path, names: tuple[str, ...], calibration: list[Path]
) -> dict[str, Path]:
    """Run the export steps of ``names`` (with their requirements, in registry order) into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    images = load_images(calibration, contract)
    exported: dict[str, Path] = {}
    for name in names:
        logger.info(
            "exporting the %s engine%s",
            name,
            f" ({len(calibration)} calibration images)" if ENGINES[name].requires else "",
        )
        exported[name] = ENGINES[name].export(ExportRequest(network, contract, workdir, images, dict(exported)))
    return exported


def compare_engines(
    engines: dict[str, Engine],
    reference: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    contract: ModelContract,
) -> dict[str, Any]:
    """Accuracy and top-1 agreement of each engine against PyTorch on the same images, and how far its
    probabilities and OOD scores (engines already put on PyTorch's scale, see on_pytorch_scale) are from PyTorch's;
    for engines that build on another (e.g. INT8 on fp32), agreement with it and the speed-up over it.

    ``reference`` is the PyTorch serving network's output for ``images`` (uint8 [N, 3, S, S]):
    [N, contract.output_width], probabilities then the OOD score.
    """
    classes = contract.num_classes
    report: dict[str, Any] = {"images": len(images), "torch_accuracy": _accuracy(reference[:, :classes], labels)}
    outputs = {name: predict_in_batches(engine, images) for name, engine in engines.items()}
    for name, out in outputs.items():
        probs = out[:, :classes]
        entry = {
            "accuracy": _accuracy(probs, labels),
            "top1_agreement_with_torch": _agreement(probs, reference[:, :classes]),
            "max_abs_probability_diff": float(np.abs(probs - reference[:, :classes]).max()) if len(images) else 0.0,
            **(_ood_agreement(out[:, classes], reference[:, classes], contract.ood.threshold) if contract.ood else {}),
        }
        for base in ENGINES[name].requires:
            if base in outputs:
                entry["accuracy_change"] = entry["accuracy"] - _accuracy(outputs[base][:, :classes], labels)
                entry["top1_agreement_with_fp32"] = _agreement(probs, outputs[base][:, :classes])
                entry["speedup_vs_fp32"] = _speedup(engines[name], engines[base], images)
        report[name] = entry
    return report


def ood_scales(engines: dict[str, Engine], val_images: np.ndarray, contract: ModelContract) -> dict[str, float]:
    """Per engine, the factor that puts its OOD scores on PyTorch's scale: the contract's threshold (PyTorch's
    ``accept_rate`` quantile of the validation scores) over the same quantile of the engine's validation scores."""
    if contract.ood is None or not len(val_images):
        return {}
    scales = {}
    for name, engine in engines.items():
        quantile = float(np.quantile(predict_in_batches(engine, val_images)[:, -1], contract.ood.accept_rate))
        scale = contract.ood.threshold / quantile if quantile > 0 else 1.0
        if abs(scale - 1.0) > SAME_SCALE:
            scales[name] = scale
    return scales


def half_precision_scales(
    network: ClassifierNet, contract: ModelContract, val_images: np.ndarray, device: torch.device
) -> tuple[dict[str, float], dict[str, Any]]:
    """For the torch engine in each of HALF_PRECISIONS (keys "torch:bfloat16", "torch:float16"): the factor that
    puts its OOD scores on float32's, the median per-image ratio over up to HALF_SCALE_IMAGES validation images
    (a half-precision backbone shifts every score by about the same factor), and what was measured. Run on
    ``device``: the training GPU when there is one, else the CPU."""
    images = torch.from_numpy(val_images[:HALF_SCALE_IMAGES])
    if contract.ood is None or not len(images):
        return {}, {}
    full = _serve(ServingNet(copy.deepcopy(network), contract), images, device)
    scales, measured = {}, {}
    for dtype in HALF_PRECISIONS:
        half = _serve(ServingNet(copy.deepcopy(network), contract).to(device).to_precision(dtype), images, device)
        key = f"torch:{str(dtype).removeprefix('torch.')}"
        scale = float((full[:, -1] / half[:, -1]).median())
        rescaled = half[:, -1] * scale
        measured[key] = {
            "images": len(images),
            "ood_score_scale": scale,
            "median_rel_ood_score_diff_after_scale": float(((rescaled - full[:, -1]).abs() / full[:, -1]).median()),
            "max_abs_probability_diff": float((half[:, :-1] - full[:, :-1]).abs().max()),
        }
        if abs(scale - 1.0) > SAME_SCALE:
            scales[key] = scale
    return scales, measured


@torch.inference_mode()
def _serve(serving: ServingNet, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    serving = serving.to(device).eval()
    return torch.cat([serving(images[i : i + BATCH].to(device)).float().cpu() for i in range(0, len(images), BATCH)])


def _ood_agreement(scores: np.ndarray, reference: np.ndarray, threshold: float) -> dict[str, float]:
    """How an engine's OOD scores compare with PyTorch's: the largest and median relative difference, and the
    share of images on the same side of the threshold."""
    if not len(scores):
        return {}
    relative = np.abs(scores - reference) / np.maximum(np.abs(reference), 1e-6)
    return {
        "max_rel_ood_score_diff": float(relative.max()),
        "median_rel_ood_score_diff": float(np.median(relative)),
        "known_agreement_with_torch": float(((scores <= threshold) == (reference <= threshold)).mean()),
    }


def predict_in_batches(engine: Engine, images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """``engine.predict`` over ``images`` (uint8 [N, 3, S, S]) in batches: its outputs [N, output width]."""
    outputs = [engine.predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else 1.0


def _speedup(engine: Engine, baseline: Engine, images: np.ndarray, repeats: int = 3) -> float:
    """How many times faster ``engine`` runs one batch of up to 16 images than ``baseline``: best of a few
    runs of each, interleaved so both see the same machine load."""
    batch = images[:BATCH]
    if not len(batch):
        return 0.0
    engine.predict(batch), baseline.predict(batch)
    times = [(_timed(engine, batch), _timed(baseline, batch)) for _ in range(repeats)]
    return min(b for _, b in times) / min(e for e, _ in times)


def _timed(engine: Engine, batch: np.ndarray) -> float:
    start = time.perf_counter()
    engine.predict(batch)
    return time.perf_counter() - start


def load_images(paths: list[Path], contract: ModelContract) -> np.ndarray:
    """Images preprocessed exactly as the service does, as uint8 [N, 3, S, S]."""
    size = contract.image_size
    if not paths:
        return np.zeros((0, 3, size, size), np.uint8)
    return np.stack([prepare_image(p.read_bytes(), contract, max_pixels=TRAINING_MAX_PIXELS) for p in paths])


def build_and_compare(
    network: ClassifierNet,
    contract: ModelContract,
    workdir: Path,
    *,
    names: tuple[str, ...],
    calibration: list[Path],
    val: list[Path],
    test: list[Path],
    reference: np.ndarray,
    test_labels: np.ndarray,
) -> tuple[dict[str, Path], dict[str, Any], ModelContract]:
    """Export ``names``, put each engine's OOD scores on PyTorch's scale (from the ``val`` images), then compare
    the engines with PyTorch's ``reference`` outputs on the ``test`` images. Returns {engine name: file}, the
    comparison and the contract with the engines' score scales."""
    files = export_engines(network, contract, workdir, names, calibration)
    engines = {name: ENGINES[name].load(path, contract, torch.get_num_threads()) for name, path in files.items()}
    if contract.ood is not None:
        scales = {**contract.ood.score_scales, **ood_scales(engines, load_images(val, contract), contract)}
        contract = contract.model_copy(update={"ood": contract.ood.model_copy(update={"score_scales": scales})})
        engines = {name: on_pytorch_scale(engine, contract) for name, engine in engines.items()}
    report = compare_engines(engines, reference, load_images(test, contract), test_labels, contract)
    for name in files:
        if "top1_agreement_with_fp32" in report[name]:
            q = report[name]
            logger.info(
                "%s on %d test images: accuracy %+.3f, top-1 agreement with fp32 %.3f, %.1fx fp32's speed",
                name,
                len(test),
                q["accuracy_change"],
                q["top1_agreement_with_fp32"],
                q["speedup_vs_fp32"],
            )
    return files, report, contract
