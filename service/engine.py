"""Choosing and building the inference engine for the device and the saved model.

Engines: "torch" (PyTorch; the GPU engine, and the CPU fallback), "onnx" (ONNX Runtime fp32, the
CPU default when the model carries an ONNX graph) and "onnx-int8" (its statically quantized copy,
served when configured). Every engine takes uint8 [N, 3, S, S] and returns probabilities [N, C].
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import torch

from service.contract import ContractError
from service.model_store import ModelDescription, load_model

INT8_MIN_AGREEMENT = 0.99  # INT8's top-1 agreement with fp32 (on the test split) below which serving it is warned about


class Engine(Protocol):
    name: str
    device: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def warm_up(self, batch_size: int = 1) -> None: ...


def pick_device(choice: str = "auto") -> torch.device:
    """"auto": CUDA when present, else CPU; "cpu", "cuda" or "cuda:N" otherwise.

    Raises ValueError for a CUDA device that is not there.
    """
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice)
    if device.type == "cuda":
        if not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"{choice} was asked for, but no such CUDA device is available")
        device = torch.device("cuda", device.index or 0)  # explicit index: tensors report theirs
    return device


def cpu_threads(requested: int, workers: int) -> int:
    """Threads for one worker: the requested number, else its share of the cores (at least 1)."""
    return requested or max(1, (os.cpu_count() or 1) // max(1, workers))


def choose_engine(choice: str, device: torch.device, available: tuple[str, ...]) -> str:
    """The engine to serve: ``choice`` unless "auto", which means torch on a GPU and ONNX fp32 on the
    CPU when the model has it. Raises ContractError when the choice cannot be served."""
    if choice == "auto":
        return "onnx" if device.type == "cpu" and "onnx" in available else "torch"
    if choice not in available:
        raise ContractError(f"CLASSIFIER_ENGINE={choice}: the model has no {choice} graph (it has: "
                            f"{', '.join(available)}); retrain with --onnx-export int8 or choose another engine")
    if choice != "torch" and device.type != "cpu":
        raise ContractError(f"CLASSIFIER_ENGINE={choice} runs on the CPU only; use torch on {device}, or CLASSIFIER_DEVICE=cpu")
    return choice


def make_engine(model: ModelDescription, name: str, device: torch.device, *, threads: int, compile_max_batch: int = 0) -> Engine:
    """Build engine ``name`` (as chosen by choose_engine) for ``model``; raises ContractError if it will not load."""
    if name == "torch":
        from service.torch_engine import TorchEngine

        return TorchEngine(load_model(model.tag), device, threads=threads,
                           compile_max_batch=compile_max_batch if device.type == "cuda" else 0)
    from service.onnx_engine import OnnxEngine, OnnxEngineError

    try:
        return OnnxEngine(model.engine_files[name], model.contract, threads=threads, name=name)
    except OnnxEngineError as exc:
        raise ContractError(f"model {model.tag}: {exc}; retrain it or set CLASSIFIER_ENGINE=torch") from None


def int8_caveat(model: ModelDescription) -> str | None:
    """A warning to log when the INT8 graph disagreed with fp32 on too many test images at training time."""
    recorded = (model.metadata.get("engines") or {}).get("onnx-int8") or {}
    agreement = recorded.get("top1_agreement_with_fp32")
    if agreement is None or agreement >= INT8_MIN_AGREEMENT:
        return None
    return (f"model {model.tag}: its INT8 graph agreed with fp32 on only {agreement:.1%} of the test images "
            f"(accuracy change {recorded.get('accuracy_change', 0):+.3f}); consider CLASSIFIER_ENGINE=onnx")
