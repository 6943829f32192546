"""Backbone weights, freezing and fine-tune unfreezing."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torchvision import models

from classifier.backbones import backbone_spec
from classifier.network import ClassifierNet, build_backbone, build_head
from training.errors import TrainingError

logger = logging.getLogger(__name__)

NO_WEIGHTS = "none"
DEFAULT_WEIGHTS = "DEFAULT"


def load_backbone(backbone: str, weights: str) -> tuple[nn.Module, str]:
    """Build a feature backbone and load its starting weights.

    ``weights``: "none" (random init), "DEFAULT" or a torchvision weights name such as
    "IMAGENET1K_V2" (downloaded through torchvision's weights API), or a path to a local
    state dict (.pth/.pt read with weights_only=True, or .safetensors).
    Returns the backbone and an id of the weights it started from.
    """
    try:
        spec = backbone_spec(backbone)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    net = build_backbone(backbone)
    weights_id = NO_WEIGHTS
    if weights.lower() != NO_WEIGHTS:
        state, weights_id = _load_weights(backbone, weights)
        state = {k: v for k, v in state.items() if not k.startswith(spec.classifier_attr + ".")}
        try:
            result = net.load_state_dict(state, strict=True)
            problem = result.missing_keys[:3] + result.unexpected_keys[:3]
        except RuntimeError as exc:  # same keys, other shapes
            problem = [str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)]
        if problem:
            raise TrainingError(
                f"weights {weights} do not fit backbone {backbone} ({', '.join(problem)}); "
                f"pass a state dict saved from torchvision's {backbone}"
            )
    return net, weights_id


def attach_head(backbone_net: nn.Module, backbone: str, num_classes: int, dropout: float) -> ClassifierNet:
    """The full network: ``backbone_net`` plus a new randomly initialised head."""
    return ClassifierNet(backbone_net, build_head(backbone_spec(backbone).feature_dim, num_classes, dropout))


def _load_weights(backbone: str, weights: str) -> tuple[dict[str, torch.Tensor], str]:
    path = Path(weights).expanduser()
    if path.suffix in {".pth", ".pt", ".bin", ".safetensors"} or path.exists():
        return _load_local(path), f"file:{path.name}"
    try:
        enum = models.get_model_weights(backbone)
        chosen = enum.DEFAULT if weights.upper() == DEFAULT_WEIGHTS else enum[weights.upper()]
    except KeyError:
        names = ", ".join(w.name for w in models.get_model_weights(backbone))
        raise TrainingError(
            f"unknown weights {weights!r} for {backbone}; use DEFAULT, one of {names}, none, or a file path"
        ) from None
    try:
        state = chosen.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise TrainingError(
            f"could not download the {chosen} weights ({getattr(exc, 'reason', exc)}); offline, use "
            f"--weights none for a random init, or --weights PATH for a local {backbone} state dict"
        ) from exc
    return state, str(chosen)


def _load_local(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TrainingError(f"weights file {path} does not exist; pass --weights none, DEFAULT, or an existing file")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrainingError(
            f"could not read weights file {path} as a state dict ({why}); pass a file saved with "
            "torch.save(model.state_dict(), ...) or safetensors"
        ) from exc
    if not isinstance(state, dict):
        raise TrainingError(f"weights file {path} holds a {type(state).__name__}, expected a state dict")
    return state


def freeze_backbone(model: ClassifierNet) -> None:
    """Phase 1: no gradients into the backbone."""
    for param in model.backbone.parameters():
        param.requires_grad_(False)


def check_unfreeze(backbone: str, prefixes: tuple[str, ...]) -> None:
    """Raises TrainingError when a name in ``prefixes`` names no block of the ``backbone`` architecture: before any
    work, weights downloaded included (the network is built on the meta device, without memory or weights)."""
    try:
        backbone_spec(backbone)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    with torch.device("meta"):
        net = build_backbone(backbone)
    for prefix in prefixes:
        _block_params(net, prefix)


def unfreeze(model: ClassifierNet, prefixes: tuple[str, ...]) -> list[nn.Parameter]:
    """Phase 2: enable gradients for backbone modules named by ``prefixes`` (e.g. "layer4").

    Returns the parameters that became trainable; raises TrainingError for unknown names.
    """
    params = []
    for prefix in prefixes:
        matched = _block_params(model.backbone, prefix)
        for param in matched:
            param.requires_grad_(True)
        params += matched
    return params


def _block_params(backbone: nn.Module, prefix: str) -> list[nn.Parameter]:
    matched = [p for name, p in backbone.named_parameters() if name == prefix or name.startswith(prefix + ".")]
    if not matched:
        blocks = sorted({name.split(".")[0] for name, _ in backbone.named_parameters()})
        raise TrainingError(f"--unfreeze {prefix!r} names no backbone block; blocks are: {', '.join(blocks)}")
    return matched


def set_train_mode(model: ClassifierNet) -> None:
    """Train the head (dropout on) while every BatchNorm keeps its ImageNet statistics.

    As in the Keras fine-tuning tutorial: updating BN statistics on a small dataset would
    wreck what the backbone learned.
    """
    model.train()
    for module in model.backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
