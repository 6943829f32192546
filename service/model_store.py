"""The saved model's on-disk layout in the BentoML store, and loading it back.

A saved model is a BentoML model whose folder holds ``model.safetensors`` (backbone and head
weights: a format that cannot execute code) and whose metadata holds the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bentoml
from safetensors.torch import load_file

from service.architecture import Classifier, build_classifier
from service.contract import ContractError, ModelContract

WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class LoadedModel:
    tag: str
    contract: ModelContract
    network: Classifier
    metadata: dict[str, Any]


def load_model(tag: str) -> LoadedModel:
    """Load a saved model by tag ("name" or "name:version") on the CPU, in eval mode.

    Raises bentoml.exceptions.NotFound for an unknown tag and ContractError when the
    metadata or the weights do not match what this project saves.
    """
    model = bentoml.models.get(tag)
    contract = ModelContract.from_metadata(model.info.metadata)
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout)
    try:
        state = load_file(model.path_of(WEIGHTS_FILE))
        network.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ContractError(f"model {model.tag}: the weights do not load into {contract.backbone} ({exc})") from exc
    return LoadedModel(str(model.tag), contract, network.eval(), dict(model.info.metadata))
