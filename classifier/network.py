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
from classifier.ood import MahalanobisScore


class ClassifierNet(nn.Module):
    """``head(backbone(x))``: the backbone gives pooled features [N, D], the head logits [N, C]. Takes
    normalised float images, as training feeds them. ``ood`` (fitted after training, None before or in models
    saved without it) scores the same pooled features; the serving network runs it."""

    def __init__(self, backbone: nn.Module, head: nn.Sequential, ood: MahalanobisScore | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.ood = ood

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
    """uint8 images [N, 3, S, S] -> [N, contract.output_width]: the calibrated probabilities
    softmax(logits / the contract's temperature), then, when the network has an OOD module, the OOD score.
    Normalisation, softmax and the OOD score run in float32 whatever precision ``to_precision`` gives the
    backbone and head."""

    def __init__(self, network: ClassifierNet, contract: ModelContract) -> None:
        super().__init__()
        if (network.ood is None) != (contract.ood is None):
            raise ValueError(
                "the network's OOD module and the contract's ood entry must be both present or both absent"
            )
        self.normalize = Normalize.from_contract(contract)
        self.network = network
        self.temperature = contract.temperature

    def to_precision(self, dtype: torch.dtype) -> ServingNet:
        """Run the backbone and head in ``dtype`` (channels_last); the rest stays float32."""
        self.network.backbone.to(dtype=dtype).to(memory_format=torch.channels_last)
        self.network.head.to(dtype=dtype)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.network.backbone.parameters()).dtype
        features = self.network.backbone(self.normalize(images).to(dtype))
        probs = (self.network.head(features).float() / self.temperature).softmax(dim=1)
        if self.network.ood is None:
            return probs
        return torch.cat([probs, self.network.ood(features)[:, None]], dim=1)


def build_backbone(name: str) -> nn.Module:
    """A randomly initialised torchvision backbone whose forward returns pooled features."""
    spec = backbone_spec(name)
    net = models.get_model(name, weights=None)
    setattr(net, spec.classifier_attr, nn.Identity())
    return net


def build_head(feature_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The new classification head: dropout then a linear layer."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))


def build_classifier(name: str, num_classes: int, dropout: float, ood_dims: int = 0) -> ClassifierNet:
    """Backbone + head (+ an OOD module of ``ood_dims`` when > 0) with random weights and empty OOD buffers;
    load a state dict into it to use it."""
    feature_dim = backbone_spec(name).feature_dim
    ood = MahalanobisScore(feature_dim, num_classes, ood_dims) if ood_dims else None
    return ClassifierNet(build_backbone(name), build_head(feature_dim, num_classes, dropout), ood)


def build_network(contract: ModelContract) -> ClassifierNet:
    """The network ``contract`` describes, with random weights: the module tree a saved model's weights load into."""
    ood_dims = contract.ood.dims if contract.ood else 0
    return build_classifier(contract.backbone, contract.num_classes, contract.dropout, ood_dims)
