"""Grad-CAM on the network (Captum) and its overlay on the photo, without a server."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.explain import OUTSIDE_DIM, GradCam, crop_box, encode_png, overlay
from classifier.network import ServingNet, build_network
from classifier.preprocessing import resize_and_crop


@pytest.fixture
def network(contract):
    torch.manual_seed(0)
    return build_network(contract).eval()


def _images(n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_heatmaps_explain_the_predicted_class_by_default(network, contract):
    images = _images()
    explanation = GradCam(network, contract).explain(images)
    with torch.inference_mode():
        expected = ServingNet(network, contract)(images).numpy()
    np.testing.assert_allclose(explanation.scores, expected, rtol=1e-5, atol=1e-6)
    assert explanation.targets == expected.argmax(axis=1).tolist()
    maps = explanation.heatmaps
    assert maps.shape == (3, 2, 2) and maps.dtype == np.float32  # resnet18's layer4 grid at 64 px
    assert maps.min() >= 0 and np.all((maps.max(axis=(1, 2)) == 1) | (maps.max(axis=(1, 2)) == 0))


def test_another_class_gets_its_own_heatmap(network, contract):
    images = _images(4)
    cam = GradCam(network, contract)
    first, second = cam.explain(images, [0] * 4), cam.explain(images, [1] * 4)
    assert first.targets == [0] * 4 and second.targets == [1] * 4
    assert not np.allclose(first.heatmaps, second.heatmaps)
    with pytest.raises(ValueError, match="class indices"):
        cam.explain(images[:1], [2])


def test_frozen_parameters_still_give_heatmaps(network, contract):
    """Training explains its grid with a frozen backbone: gradients reach the layer anyway."""
    for p in network.parameters():
        p.requires_grad_(False)
    maps = GradCam(network, contract).explain(_images(2)).heatmaps
    assert maps.max() == 1.0


def _gradient_photo(width: int, height: int) -> Image.Image:
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8), "RGB")


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (80, 80), (1000, 200)])
def test_crop_box_is_the_region_preprocessing_keeps(contract, size):
    photo = _gradient_photo(*size)
    kept = resize_and_crop(photo, contract).transpose(1, 2, 0).astype(np.int16)
    box = crop_box(*size, contract)
    side = contract.image_size

    def error(b):
        return np.abs(np.asarray(photo.crop(b).resize((side, side)), dtype=np.int16) - kept).mean()

    shifted = (box[0] + (box[2] - box[0]) // 4, box[1], box[2] + (box[2] - box[0]) // 4, box[3])
    assert error(box) < 2.5 and error(shifted) > 4 * error(box)


def test_overlay_colours_the_crop_by_heat_and_dims_the_rest(contract):
    photo = _gradient_photo(500, 375)
    left, top, right, bottom = crop_box(500, 375, contract)
    heat = np.zeros((2, 2), dtype=np.float32)
    cold = np.asarray(overlay(photo, heat, contract), dtype=np.int16)
    assert cold.shape == (375, 500, 3)
    original = np.asarray(photo, dtype=np.int16)
    np.testing.assert_array_equal(cold[top:bottom, left:right], original[top:bottom, left:right])  # no heat: the photo
    np.testing.assert_allclose(cold[:, :left], np.round(original[:, :left] * OUTSIDE_DIM), atol=1)  # cut away: dimmed
    hot = np.asarray(overlay(photo, np.ones((2, 2), dtype=np.float32), contract), dtype=np.int16)
    assert np.abs(hot[top:bottom, left:right] - original[top:bottom, left:right]).mean() > 20


def test_png_is_valid_and_the_photos_size(contract):
    photo = _gradient_photo(123, 77)
    data = encode_png(overlay(photo, np.ones((7, 7), dtype=np.float32), contract))
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG" and decoded.size == (123, 77)
