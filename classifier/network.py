"""The network: a torchvision backbone without its classifier, plus a new head; and the serving network
around it, which takes uint8 images and returns probabilities.

Shared by training (which fills in pretrained weights) and serving (which loads saved ones), so both
build exactly the same module tree and state-dict keys. ``ServingNet`` is what every engine runs (its
ONNX export included), so normalisation and softmax exist once, here.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from classifier.backbones import backbone_spec
from classifier.contract import ModelContract


class ClassifierNet(nn.Module):
    """``head(backbone(x))``: the backbone gives pooled features [N, D], the head logits [N, C]. Takes
    normalised float images, as training feeds them."""

    def __init__(self, backbone: nn.Module, head: nn.Sequential) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class Normalize(nn.Module):
    """uint8 (or 0-255 float) images [N, 3, H, W] or [3, H, W] -> (x / 255 - mean) / std, in the buffers' dtype
    (float32 unless the module is cast)."""

    scale: torch.Tensor
    offset: torch.Tensor

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("offset", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std_t, persistent=False)

    @classmethod
    def from_contract(cls, contract: ModelContract) -> Normalize:
        return cls(contract.mean, contract.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.scale.dtype) * self.scale - self.offset


class ServingNet(nn.Module):
    """uint8 images [N, 3, S, S] -> calibrated probabilities [N, C]: softmax(logits / the contract's temperature).
    Normalisation and softmax run in float32 whatever the network's dtype: cast only ``.network`` to half
    precision (as the torch engine does on a GPU)."""

    def __init__(self, network: ClassifierNet, contract: ModelContract) -> None:
        super().__init__()
        self.normalize = Normalize.from_contract(contract)
        self.network = network
        self.temperature = contract.temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.network.parameters()).dtype
        logits = self.network(self.normalize(images).to(dtype)).float()
        return (logits / self.temperature).softmax(dim=1)


def build_backbone(name: str) -> nn.Module:
    """A randomly initialised torchvision backbone whose forward returns pooled features."""
    spec = backbone_spec(name)
    net = models.get_model(name, weights=None)
    setattr(net, spec.classifier_attr, nn.Identity())
    return net


def build_head(feature_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The new classification head: dropout then a linear layer."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))


def build_classifier(name: str, num_classes: int, dropout: float) -> ClassifierNet:
    """Backbone + head with random weights; load a state dict into it to use it."""
    return ClassifierNet(build_backbone(name), build_head(backbone_spec(name).feature_dim, num_classes, dropout))
