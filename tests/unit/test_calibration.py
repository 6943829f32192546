"""Temperature scaling: fitted on one split, it makes confidence match accuracy without changing a prediction."""

from __future__ import annotations

import pytest
import torch

from classifier.network import ServingNet, build_classifier
from training.calibration import (
    MIN_IMAGES,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability,
    rescale,
)


def overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-class model that is right 70% of the time but says so with ~99% confidence."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    predicted = torch.where(torch.rand(n, generator=g) < 0.7, labels, (labels + 1) % 3)
    logits = torch.randn(n, 3, generator=g) * 0.5
    logits[torch.arange(n), predicted] += 6.0
    return logits.softmax(1), labels


def test_ece_of_hand_made_cases():
    labels = torch.tensor([0, 0, 1, 1])
    right_and_sure = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert expected_calibration_error(right_and_sure, labels) == pytest.approx(0.0)
    half_right_and_sure = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert expected_calibration_error(half_right_and_sure, labels) == pytest.approx(0.5)
    rows = reliability(half_right_and_sure, labels)
    assert len(rows) == 1 and rows[0]["share"] == 1.0 and rows[0]["accuracy"] == 0.5


def test_temperature_fitted_on_validation_lowers_test_ece_and_keeps_predictions():
    with torch.inference_mode():  # as training's evaluations produce them
        val_probs, val_labels = overconfident(600, seed=0)
    test_probs, test_labels = overconfident(600, seed=1)
    temperature = fit_temperature(val_probs, val_labels)
    assert temperature > 1.5  # overconfident: softened
    after = rescale(test_probs, temperature)
    assert torch.equal(after.argmax(1), test_probs.argmax(1))
    assert expected_calibration_error(after, test_labels) < expected_calibration_error(test_probs, test_labels) / 3
    report = calibrate(val_probs, val_labels, test_probs, test_labels)
    assert report["temperature"] == pytest.approx(temperature)
    assert report["test_ece_after"] < report["test_ece_before"] and report["test_nll_after"] < report["test_nll_before"]


def test_too_few_validation_images_leave_the_model_uncalibrated():
    probs, labels = overconfident(MIN_IMAGES - 1, seed=2)
    report = calibrate(probs, labels, probs, labels)
    assert report["temperature"] == 1.0 and "not fitted" in report["fitted_on"]
    assert report["test_ece_after"] == pytest.approx(report["test_ece_before"], abs=1e-6)


def test_the_serving_network_applies_the_contracts_temperature(contract):
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout).eval()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        plain = ServingNet(network, contract)(images)
        softened = ServingNet(network, contract.model_copy(update={"temperature": 2.0}))(images)
    assert contract.temperature == 1.0  # a model saved before calibration serves as it did
    assert torch.allclose(softened, rescale(plain, 2.0), atol=1e-5)
    assert torch.equal(softened.argmax(1), plain.argmax(1))
