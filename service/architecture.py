"""The network: a torchvision backbone without its classifier, plus a new head.

Shared by training (which fills in pretrained weights) and serving (which loads saved ones),
so both build exactly the same module tree and state-dict keys.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from service.backbones import backbone_spec


class Classifier(nn.Module):
    """``head(backbone(x))``: backbone gives pooled features [N, D], head gives logits [N, C]."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_backbone(name: str) -> nn.Module:
    """A randomly initialised torchvision backbone whose forward returns pooled features."""
    spec = backbone_spec(name)
    net = models.get_model(name, weights=None)
    setattr(net, spec.classifier_attr, nn.Identity())
    return net


def build_head(feature_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The new classification head: dropout then a linear layer."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))


def build_classifier(name: str, num_classes: int, dropout: float) -> Classifier:
    """Backbone + head with random weights; load a state dict into it to use it."""
    return Classifier(build_backbone(name), build_head(backbone_spec(name).feature_dim, num_classes, dropout))
