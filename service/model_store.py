"""The saved model's on-disk layout in the BentoML store, checking it, and loading it back.

A saved model is a BentoML model whose folder holds ``model.safetensors`` (backbone and head
weights: a format that cannot execute code), optionally ONNX graphs of the same network for ONNX
Runtime (``model.onnx``, fp32, and ``model.int8.onnx``, statically quantized), and whose metadata
holds the contract.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import bentoml
import torch
from bentoml.exceptions import BentoMLException
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from service.architecture import Classifier, build_classifier
from service.contract import ContractError, ModelContract

WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}  # engine name -> file in the model folder


@dataclass(frozen=True)
class ModelDescription:
    tag: str  # resolved: name:version, never :latest
    contract: ModelContract
    metadata: dict[str, Any]
    weights_path: str
    engine_files: dict[str, str]  # ONNX engines the model carries -> their paths

    @property
    def engines(self) -> tuple[str, ...]:
        """Engines this model can be served with: always torch, plus its ONNX graphs."""
        return ("torch", *self.engine_files)


@dataclass(frozen=True)
class LoadedModel:
    tag: str
    contract: ModelContract
    network: Classifier
    metadata: dict[str, Any]


def describe_model(tag: str) -> ModelDescription:
    """Resolve ``tag`` and check that its weights fit its contract, without loading them.

    Raises ContractError, with a message naming the problem and the fix, for an unknown tag,
    a missing or invalid contract, or a weights file that is missing, truncated or does not
    match the architecture (names and shapes are compared on the meta device).
    """
    try:
        model = bentoml.models.get(tag)
    except (BentoMLException, ValueError) as exc:  # NotFound, or a malformed tag
        raise ContractError(
            f"model {tag!r} is not in the BentoML store ({exc}); train one with `python -m training` "
            "or set CLASSIFIER_MODEL_TAG to a tag from `bentoml models list`"
        ) from None
    contract = ModelContract.from_metadata(model.info.metadata)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_classifier(contract.backbone, contract.num_classes, contract.dropout).state_dict().items()}
    weights_path = model.path_of(WEIGHTS_FILE)
    try:
        with safe_open(weights_path, framework="pt") as fh:
            found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (OSError, SafetensorError) as exc:
        raise ContractError(f"model {model.tag}: {WEIGHTS_FILE} is missing or unreadable ({exc}); retrain or re-import it") from None
    if found != expected:
        diff = sorted(set(found.items()) ^ set(expected.items()))[:3]
        raise ContractError(f"model {model.tag}: the weights do not match its contract ({contract.backbone}, "
                            f"{contract.num_classes} classes); differing entries: {diff}")
    engine_files = {name: model.path_of(file) for name, file in ONNX_FILES.items() if os.path.isfile(model.path_of(file))}
    return ModelDescription(str(model.tag), contract, dict(model.info.metadata), weights_path, engine_files)


def load_model(tag: str) -> LoadedModel:
    """Load a saved model by tag on the CPU, in eval mode; raises ContractError as describe_model does."""
    description = describe_model(tag)
    contract = description.contract
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout)
    try:
        network.load_state_dict(load_file(description.weights_path), strict=True)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise ContractError(f"model {description.tag}: the weights do not load into {contract.backbone} ({exc})") from exc
    return LoadedModel(description.tag, contract, network.eval(), description.metadata)
