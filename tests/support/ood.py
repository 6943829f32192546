"""An OOD score fitted on a test network's own features, for tests that need a network and contract with one."""

from __future__ import annotations

import torch

from classifier.contract import ModelContract, OodContract
from classifier.network import ClassifierNet, Normalize
from training.ood import fit_mahalanobis, threshold_at


def fit_ood(network: ClassifierNet, contract: ModelContract, images: torch.Tensor) -> ModelContract:
    """Fit ``network.ood`` on the features of uint8 ``images`` (labels taken in turn from the contract's classes)
    and return the contract with its ood entry (threshold at 95% of those images)."""
    with torch.inference_mode():
        features = network.backbone(Normalize.from_contract(contract)(images))
    labels = torch.arange(len(images)) % contract.num_classes
    network.ood, _ = fit_mahalanobis(features, labels, contract.num_classes)
    with torch.inference_mode():
        threshold = threshold_at(network.ood(features), 0.95)
    return contract.model_copy(
        update={"ood": OodContract(dims=network.ood.dims, threshold=threshold, accept_rate=0.95)}
    )
