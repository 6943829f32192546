"""Temperature scaling: one scalar T, fitted on the validation split, so that softmax(logits / T) says how often
the model is right. It changes no prediction (argmax is the same for any T > 0), only the probabilities.

T is written into the contract and applied inside the exported graph (classifier.network.ServingNet), so
every engine serves calibrated probabilities. Pure functions on CPU tensors; no I/O.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.nn import functional as F

logger = logging.getLogger(__name__)

MIN_IMAGES = 20  # fewer validation images than this fit T to noise: keep T = 1 and say so
BOUNDS = (0.05, 20.0)  # T outside these means the split is separable or degenerate, not miscalibrated
BINS = 15


def rescale(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T): the same as softmax(logits / T), as log p differs from the logits by a per-row constant."""
    return (probs.double().clamp_min(1e-300).log() / temperature).softmax(dim=1).to(probs.dtype)


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The T in BOUNDS that minimises the negative log-likelihood of ``labels`` under softmax(log probs / T)."""
    # Clones: evaluation ran in inference mode, whose tensors autograd may not save.
    log_probs, labels = probs.clone().double().clamp_min(1e-300).log(), labels.clone()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(log_probs / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(nll)
    return float(min(max(log_t.exp().item(), BOUNDS[0]), BOUNDS[1]))


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[dict[str, float]]:
    """Per confidence bin (equal width on [0, 1]): mean confidence, accuracy and the share of images in it."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    index = (confidence.double() * bins).long().clamp(max=bins - 1)
    rows = []
    for b in range(bins):
        chosen = index == b
        n = int(chosen.sum())
        if n:
            rows.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "confidence": float(confidence[chosen].double().mean()),
                    "accuracy": float(correct[chosen].mean()),
                    "share": n / len(labels),
                }
            )
    return rows


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Sum over confidence bins of (share of images) x |accuracy - mean confidence|: 0 is perfectly calibrated."""
    return float(
        sum(row["share"] * abs(row["accuracy"] - row["confidence"]) for row in reliability(probs, labels, bins))
    )


def calibrate(
    val_probs: torch.Tensor, val_labels: torch.Tensor, test_probs: torch.Tensor, test_labels: torch.Tensor
) -> dict[str, Any]:
    """Fit T on the validation split and report what it does on the test split (ECE and NLL before and after)."""
    fitted = len(val_labels) >= MIN_IMAGES
    temperature = fit_temperature(val_probs, val_labels) if fitted else 1.0
    after = rescale(test_probs, temperature)
    return {
        "temperature": temperature,
        "fitted_on": f"{len(val_labels)} validation images"
        if fitted
        else f"not fitted: {len(val_labels)} validation images, fewer than {MIN_IMAGES}",
        "test_ece_before": expected_calibration_error(test_probs, test_labels),
        "test_ece_after": expected_calibration_error(after, test_labels),
        "test_nll_before": _nll(test_probs, test_labels),
        "test_nll_after": _nll(after, test_labels),
    }


def _nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.nll_loss(probs.double().clamp_min(1e-12).log(), labels)) if len(labels) else 0.0


def log_calibration(calibration: dict[str, Any]) -> None:
    logger.info(
        "calibration: temperature %.3f (%s); test ECE %.3f -> %.3f, NLL %.3f -> %.3f",
        calibration["temperature"],
        calibration["fitted_on"],
        calibration["test_ece_before"],
        calibration["test_ece_after"],
        calibration["test_nll_before"],
        calibration["test_nll_after"],
    )
