"""The out-of-distribution score as a module of the network: how far an image's pooled features lie from
every class the model was trained on.

Squared Mahalanobis distance of the L2-normalised features to the nearest class mean, under one covariance
shared by the classes, taken in a whitened space (``projection`` maps features to it, ``centres`` are the
class means there) and divided by its width, so a typical training image scores about 1. Normalising first
separated other images far better in our measurements, as Mahalanobis++ (Mueller and Hein, 2025) reports:
docs/decisions.md. Its buffers are fitted by training (training/ood.py) and saved with the weights; it runs
inside the serving graph, so every engine computes it in the same forward pass as the probabilities.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def normalize_features(features: torch.Tensor) -> torch.Tensor:
    """Pooled features [N, D] scaled to unit L2 norm, in float32: what the distance is taken on (fitting included)."""
    return F.normalize(features.float(), dim=1, eps=1e-12)


class MahalanobisScore(nn.Module):
    """Pooled features [N, D] -> OOD scores [N] (float32 whatever the features' dtype)."""

    mean: torch.Tensor
    projection: torch.Tensor
    centres: torch.Tensor

    def __init__(self, feature_dim: int, num_classes: int, dims: int) -> None:
        super().__init__()
        # Subtracting the training features' mean first keeps the whitened vectors small: the normalised
        # features share a large common part, and without it the expanded distance below loses ~1% to rounding.
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("projection", torch.zeros(feature_dim, dims))
        self.register_buffer("centres", torch.zeros(num_classes, dims))

    @property
    def dims(self) -> int:
        return self.projection.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (normalize_features(features) - self.mean) @ self.projection
        # ||z - c||^2 expanded: one matrix product for all classes instead of an [N, C, dims] difference.
        squared = (z * z).sum(dim=1, keepdim=True) - 2.0 * (z @ self.centres.T) + (self.centres**2).sum(dim=1)
        return squared.min(dim=1).values.clamp_min(0.0) / self.dims
