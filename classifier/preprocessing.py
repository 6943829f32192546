"""The contract's preprocessing, as pure functions shared by training and serving.

Per image (before batching): decode, resize the shorter side and center-crop, giving a uint8 tensor.
Scaling and normalisation are part of the network (classifier.network.Normalize), so every engine
gets the same uint8 images.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from classifier.contract import ModelContract
from classifier.imaging import DEFAULT_MAX_PIXELS, decode_image

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def fit(image: Image.Image | torch.Tensor, contract: ModelContract) -> Image.Image | torch.Tensor:
    """Shorter side to resize_size, then the center image_size square: a PIL image, or a uint8 tensor
    [3, H, W] on any device (the batched JPEG decoder's output)."""
    image = F.resize(
        image, [contract.resize_size], interpolation=_INTERPOLATION[contract.interpolation], antialias=True
    )
    return F.center_crop(image, [contract.image_size, contract.image_size])


def resize_and_crop(img: Image.Image, contract: ModelContract) -> torch.Tensor:
    """RGB image -> uint8 tensor [3, image_size, image_size] as the contract prescribes."""
    return F.pil_to_tensor(fit(img, contract))


def prepare_image(data: bytes, contract: ModelContract, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Encoded image bytes -> uint8 tensor [3, S, S]; raises InputError for unusable input."""
    img = decode_image(data, max_pixels=max_pixels, draft_size=contract.resize_size)
    return resize_and_crop(img, contract)
