"""Out-of-distribution detection, fitted after training: the Mahalanobis score's parameters, its threshold,
and how well it separates the task's images from other images.

The score (classifier/ood.py) is the squared Mahalanobis distance of an image's L2-normalised pooled features to the
nearest class mean, with one covariance shared by the classes: Ledoit-Wolf shrinkage towards a scaled
identity keeps it invertible when there are fewer images than feature dimensions (2048 for ResNet50). The
threshold is the ``accept_rate`` quantile of the validation split's scores. With images of other things
(``--ood-data``), the report compares it with two scores from the logits, the energy score and the maximum
softmax probability, by AUROC: docs/decisions.md has the measurements behind the choice. Pure functions on
CPU tensors; no I/O besides logging.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from classifier.contract import OodContract
from classifier.ood import MahalanobisScore, normalize_features

logger = logging.getLogger(__name__)

FEW_VALIDATION_IMAGES = 100  # the accept-rate quantile of fewer validation scores is a rough threshold


def ledoit_wolf(centred: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The Ledoit-Wolf shrunk covariance of ``centred`` rows [N, D] (float64), and the shrinkage in [0, 1]: the
    weight of mu * I, mu the mean variance (the estimator of Ledoit and Wolf, 2004, as scikit-learn computes it)."""
    n, d = centred.shape
    empirical = centred.T @ centred / n
    mu = float(torch.trace(empirical)) / d
    squared = centred**2
    beta_sum = float((squared.T @ squared).sum()) / n
    delta_sum = float((empirical**2).sum())
    beta = (beta_sum - delta_sum) / (d * n)
    delta = (delta_sum - 2.0 * mu * float(torch.trace(empirical)) + d * mu**2) / d
    shrinkage = 0.0 if delta <= 0 else min(beta, delta) / delta
    shrunk = (1.0 - shrinkage) * empirical + shrinkage * mu * torch.eye(d, dtype=centred.dtype)
    return shrunk, max(0.0, shrinkage)


def fit_mahalanobis(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[MahalanobisScore, float]:
    """A fitted MahalanobisScore for ``features`` [N, D] with class ``labels`` [N], and the shrinkage used."""
    f = normalize_features(features).double()
    means = torch.stack([f[labels == c].mean(dim=0) for c in range(num_classes)])
    covariance, shrinkage = ledoit_wolf(f - means[labels])
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    projection = eigenvectors / eigenvalues.clamp_min(1e-12 * float(eigenvalues.max())).sqrt()  # whitening
    module = MahalanobisScore(f.shape[1], num_classes, f.shape[1])
    centre = f.mean(dim=0)
    module.mean.copy_(centre.float())
    module.projection.copy_(projection.float())
    module.centres.copy_(((means - centre) @ projection).float())
    return module.eval(), shrinkage


def threshold_at(scores: torch.Tensor, accept_rate: float) -> float:
    """The score at or below which ``accept_rate`` of ``scores`` lie (positive, as the contract requires)."""
    return max(float(torch.quantile(scores.double(), accept_rate)), 1e-6)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """The probability that an image of ``outside`` scores higher than one of ``inside`` (ties count half):
    1 separates them perfectly, 0.5 is chance."""
    ordered = np.sort(np.asarray(inside, dtype=np.float64))
    outside = np.asarray(outside, dtype=np.float64)
    below = np.searchsorted(ordered, outside, side="left") + np.searchsorted(ordered, outside, side="right")
    return float(below.mean() / (2 * len(ordered))) if len(ordered) and len(outside) else float("nan")


def logit_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scores from the logits that Mahalanobis is compared with (higher: more out of distribution)."""
    return {
        "energy": -torch.logsumexp(logits.double(), dim=1),
        "max_softmax": -logits.double().softmax(dim=1).max(dim=1).values,
    }


def fit(
    train: tuple[torch.Tensor, torch.Tensor], val: torch.Tensor, num_classes: int, accept_rate: float
) -> tuple[MahalanobisScore, OodContract, dict[str, Any]]:
    """Fit the score on the training features and labels, set the threshold on the validation features: the module,
    the contract's entry and a report of the fit."""
    features, labels = train
    module, shrinkage = fit_mahalanobis(features, labels, num_classes)
    with torch.inference_mode():
        val_scores = module(val)
    threshold = threshold_at(val_scores, accept_rate)
    contract = OodContract(dims=module.dims, threshold=threshold, accept_rate=accept_rate)
    report = {
        "method": contract.method,
        "dims": module.dims,
        "shrinkage": shrinkage,
        "fitted_on": f"{len(labels)} training features",
        "threshold": threshold,
        "accept_rate": accept_rate,
        "val_flagged": float((val_scores > threshold).double().mean()) if len(val_scores) else 0.0,
    }
    return module, contract, report


def separation(
    module: MahalanobisScore,
    head: torch.nn.Module,
    threshold: float,
    inside: torch.Tensor,
    outside: torch.Tensor,
) -> dict[str, Any]:
    """How the score separates ``inside`` features (the test split) from ``outside`` ones (other images): the
    share of each flagged at ``threshold`` and the AUROC of Mahalanobis, energy and maximum softmax."""
    with torch.inference_mode():
        head.eval()
        maha_in, maha_out = module(inside), module(outside)
        logit_in, logit_out = logit_scores(head(inside)), logit_scores(head(outside))
    aurocs = {"mahalanobis": auroc(maha_in.numpy(), maha_out.numpy())}
    aurocs |= {name: auroc(logit_in[name].numpy(), logit_out[name].numpy()) for name in logit_in}
    return {
        "images": len(outside),
        "flagged": float((maha_out > threshold).double().mean()) if len(outside) else 0.0,
        "test_flagged": float((maha_in > threshold).double().mean()) if len(inside) else 0.0,
        "auroc": aurocs,
    }


def log_fit(fitted: dict[str, Any], val_images: int) -> None:
    """Log the threshold and what it flags; warn when the validation split is too small to set it well."""
    logger.info(
        "OOD score: threshold %.3f flags %.1f%% of validation and %.1f%% of test images",
        fitted["threshold"],
        100 * fitted["val_flagged"],
        100 * fitted["test_flagged"],
    )
    if val_images < FEW_VALIDATION_IMAGES:
        logger.warning(
            "the OOD threshold rests on %d validation images: the share of new images it flags may differ from "
            "%.0f%% by several points; add validation images (or raise --val-ratio) for a steadier one",
            val_images,
            100 * (1 - fitted["accept_rate"]),
        )
    if "ood_data" in fitted:
        other = fitted["ood_data"]
        logger.info(
            "  --ood-data: %.1f%% of %d images flagged; AUROC %s",
            100 * other["flagged"],
            other["images"],
            ", ".join(f"{name} {value:.3f}" for name, value in other["auroc"].items()),
        )
