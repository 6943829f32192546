"""The saved model: its layout in the BentoML model store, written by training and read by serving, here only.

A saved model is a BentoML model whose folder holds ``model.safetensors`` (backbone and head weights: a
format that cannot execute code), ``metrics.json`` (training's full report), and the files of the engines
exported with it (``classifier.engines.ENGINES[name].file``, e.g. ``model.onnx``); its metadata holds the
contract and training's figures. The BentoML model store is reached through its public ``bentoml.models``
API, imported where used: nothing else in this package imports BentoML. Describing a model imports no torch (the
CPU service runs without it); loading its weights does.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError, safe_open

from classifier.backbones import backbone_spec
from classifier.contract import METADATA_KEY, ContractError, ModelContract
from classifier.engines import ENGINES

if TYPE_CHECKING:
    from classifier.network import ClassifierNet

WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
REFERENCE_FILE = "reference.npz"  # test images as the engines get them, and PyTorch fp32's outputs for them
REFERENCE_IMAGES = 32


@dataclass(frozen=True)
class ModelDescription:
    tag: str  # resolved: name:version, never :latest
    contract: ModelContract
    metadata: dict[str, Any]
    weights_path: str
    engine_files: dict[str, str]  # engines with their own file that the model carries -> their paths
    reference_path: str | None = None  # REFERENCE_FILE, when training saved one

    @property
    def engines(self) -> tuple[str, ...]:
        """Engines this model can be served with, in registry order: those that run the weights, and those
        whose file (their own, or the one they read) it carries."""

        return tuple(
            name for name, spec in ENGINES.items() if spec.reads_file is None or spec.graph_engine in self.engine_files
        )


@dataclass(frozen=True)
class LoadedModel:
    tag: str
    contract: ModelContract
    network: ClassifierNet
    metadata: dict[str, Any]


def describe_model(tag: str) -> ModelDescription:
    """Resolve ``tag`` and check that its weights fit its contract, without loading them.

    Raises ContractError, with a message naming the problem and the fix, for an unknown tag,
    a missing or invalid contract, or a weights file that is missing, truncated or does not
    match the architecture (names and shapes are compared on the meta device).
    """
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        model = bentoml.models.get(tag)
    except (BentoMLException, ValueError) as exc:  # NotFound, or a malformed tag
        raise ContractError(
            f"model {tag!r} is not in the BentoML store ({exc}); train one with `python -m training` "
            "or set CLASSIFIER_MODEL_TAG to a tag from `bentoml models list`"
        ) from None
    contract = ModelContract.from_metadata(model.info.metadata)
    weights_path = model.path_of(WEIGHTS_FILE)
    _check_weights(str(model.tag), contract, weights_path)
    engine_files = {
        name: model.path_of(spec.file)
        for name, spec in ENGINES.items()
        if spec.file is not None and os.path.isfile(model.path_of(spec.file))
    }
    reference = model.path_of(REFERENCE_FILE)
    return ModelDescription(
        str(model.tag),
        contract,
        dict(model.info.metadata),
        weights_path,
        engine_files,
        reference if os.path.isfile(reference) else None,
    )


@dataclass(frozen=True)
class ReferenceSample:
    """What every engine must reproduce: ``images`` uint8 [N, 3, S, S] as the engines get them, and ``outputs``
    float32 [N, contract.output_width], the PyTorch fp32 serving network's for them."""

    images: np.ndarray
    outputs: np.ndarray


def save_reference(path: Path, sample: ReferenceSample) -> None:
    np.savez_compressed(path, images=sample.images, outputs=sample.outputs)


def load_reference(model: ModelDescription) -> ReferenceSample | None:
    """The model's reference sample, None when it has none (saved before it) or it does not fit the contract."""
    if model.reference_path is None:
        return None
    with np.load(model.reference_path, allow_pickle=False) as data:
        images, outputs = data["images"], data["outputs"]
    size, width = model.contract.image_size, model.contract.output_width
    if images.dtype != np.uint8 or images.shape[1:] != (3, size, size) or outputs.shape != (len(images), width):
        return None
    return ReferenceSample(images, outputs.astype(np.float32))


def _check_weights(tag: str, contract: ModelContract, weights_path: str) -> None:
    """The weights file is complete, was written for this backbone, and its head (and OOD module) have the
    contract's shapes. The backbone's own tensors are checked when the weights are loaded (load_model)."""
    try:
        with safe_open(weights_path, framework="numpy") as fh:
            found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
            written = json.loads((fh.metadata() or {}).get("contract", "{}"))
            written_for = written.get("backbone", contract.backbone) if isinstance(written, dict) else None
    except (OSError, SafetensorError, ValueError) as exc:
        raise ContractError(
            f"model {tag}: {WEIGHTS_FILE} is missing or unreadable ({exc}); retrain or re-import it"
        ) from None
    expected = outside_backbone_shapes(contract)
    outside = {k: v for k, v in found.items() if not k.startswith("backbone.")}
    if outside != expected or written_for != contract.backbone or len(outside) == len(found):
        diff = sorted(set(outside.items()) ^ set(expected.items()))[:3]
        raise ContractError(
            f"model {tag}: the weights do not match its contract ({contract.backbone}, "
            f"{contract.num_classes} classes); differing entries: {diff or f'weights for {written_for}'}"
        )


def outside_backbone_shapes(contract: ModelContract) -> dict[str, tuple[int, ...]]:
    """The shapes of the head's (and OOD module's) tensors in classifier.network.build_network(contract)'s state
    dict, computed without torch (tests/unit/test_registry.py holds the two together)."""
    classes, features = contract.num_classes, backbone_spec(contract.backbone).feature_dim
    shapes = {"head.1.weight": (classes, features), "head.1.bias": (classes,)}
    if contract.ood is not None:
        dims = contract.ood.dims
        shapes |= {"ood.mean": (features,), "ood.projection": (features, dims), "ood.centres": (classes, dims)}
    return shapes


def load_model(tag: str) -> LoadedModel:
    """Load a saved model by tag on the CPU, in eval mode; raises ContractError as describe_model does."""
    from safetensors.torch import load_file

    from classifier.network import build_network

    description = describe_model(tag)
    contract = description.contract
    network = build_network(contract)
    try:
        network.load_state_dict(load_file(description.weights_path), strict=True)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise ContractError(
            f"model {description.tag}: the weights do not load into {contract.backbone} ({exc})"
        ) from exc
    return LoadedModel(description.tag, contract, network.eval(), description.metadata)


def save_model(
    name: str,
    network: ClassifierNet,
    contract: ModelContract,
    *,
    metadata: dict[str, Any],
    report: dict[str, Any],
    engine_files: dict[str, Path] | None = None,
    reference: ReferenceSample | None = None,
) -> str:
    """Create a new version of model ``name`` and return its tag ("name:version").

    ``metadata`` (test metrics, training arguments, dataset fingerprint, ...) is stored beside the contract;
    ``report`` (the full metrics JSON), ``engine_files`` ({engine name: exported file}) and the ``reference``
    sample (for the service's engine choice) go into the folder.
    """
    import bentoml
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    labels = {"backbone": contract.backbone, "classes": str(contract.num_classes)}
    with bentoml.models.create(
        name, labels=labels, metadata=_without_none({METADATA_KEY: contract.to_metadata(), **metadata})
    ) as model:
        save_file(state, model.path_of(WEIGHTS_FILE), metadata={"contract": json.dumps(contract.to_metadata())})
        with open(model.path_of(METRICS_FILE), "w") as fh:
            json.dump(report, fh, indent=2)
        for engine, source in (engine_files or {}).items():
            target = ENGINES[engine].file
            if target is None:
                raise ValueError(f"engine {engine} has no file of its own to save")
            shutil.copyfile(source, model.path_of(target))
        if reference is not None:
            save_reference(Path(model.path_of(REFERENCE_FILE)), reference)
    return str(model.tag)


def _without_none(value: Any) -> Any:
    """BentoML metadata rejects None: drop such entries (absent means unset)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value if v is not None]
    return value
