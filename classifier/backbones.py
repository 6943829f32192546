"""The supported torchvision backbones, as plain data (no torch import, so CLIs start fast)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """How to strip a torchvision classifier down to pooled features."""

    classifier_attr: str  # attribute holding the ImageNet classifier, replaced by Identity
    feature_dim: int
    default_unfreeze: tuple[str, ...]  # top blocks fine-tuned by default
    cam_layer: str  # the last convolutional block: where Grad-CAM looks (classifier/explain.py)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec("fc", 2048, ("layer4",), "layer4"),
    "resnet18": BackboneSpec("fc", 512, ("layer4",), "layer4"),
    "resnet101": BackboneSpec("fc", 2048, ("layer4",), "layer4"),
    "efficientnet_b0": BackboneSpec("classifier", 1280, ("features.7", "features.8"), "features.8"),
    "mobilenet_v3_large": BackboneSpec("classifier", 960, ("features.16",), "features.16"),
}
DEFAULT_BACKBONE = "resnet50"


def backbone_spec(name: str) -> BackboneSpec:
    """Look up a supported backbone; raises ValueError naming the choices."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}") from None
