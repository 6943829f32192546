"""Save a trained network with its contract and metrics as a new version in the BentoML store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import bentoml
from safetensors.torch import save_file

from service.architecture import Classifier
from service.contract import METADATA_KEY, ModelContract
from service.model_store import METRICS_FILE, WEIGHTS_FILE


def save_model(
    name: str, network: Classifier, contract: ModelContract, *, metadata: dict[str, Any], report: dict[str, Any],
    files: dict[str, Path] | None = None,
) -> str:
    """Create a new version of model ``name`` and return its tag ("name:version").

    ``metadata`` (test metrics, training arguments, dataset fingerprint, ...) is stored beside
    the contract; ``report`` (the full metrics JSON) and ``files`` (e.g. ONNX graphs, keyed by the
    name they get in the model folder) go into the model folder.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    labels = {"backbone": contract.backbone, "classes": str(contract.num_classes)}
    with bentoml.models.create(
        name, labels=labels, metadata=_without_none({METADATA_KEY: contract.to_metadata(), **metadata})
    ) as model:
        save_file(state, model.path_of(WEIGHTS_FILE), metadata={"contract": json.dumps(contract.to_metadata())})
        with open(model.path_of(METRICS_FILE), "w") as fh:
            json.dump(report, fh, indent=2)
        for target, source in (files or {}).items():
            shutil.copyfile(source, model.path_of(target))
    return str(model.tag)


def _without_none(value: Any) -> Any:
    """BentoML metadata rejects None: drop such entries (absent means unset)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value if v is not None]
    return value
