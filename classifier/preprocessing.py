"""The contract's preprocessing, as pure functions shared by training and serving.

Per image (before batching): decode, resize the shorter side and center-crop, giving uint8 [3, S, S]. Scaling
and normalisation are part of the network (classifier.network.Normalize), so every engine gets the same uint8
images. Pillow and numpy only: the CPU service runs it without torch. It gives, within one grey level (rounding),
what torchvision's ``transforms.v2.functional.resize`` then ``center_crop`` give for a PIL image (what training did
before; held together by tests/unit/test_preprocessing.py); the batched JPEG decoder (classifier/jpeg_batch.py)
runs those on tensors, within half a grey level on average (tests/unit/test_jpeg_batch.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from classifier.contract import ModelContract
from classifier.imaging import DEFAULT_MAX_PIXELS, decode_image

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``shorter`` and the aspect kept, the longer side truncated."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_anchor(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of the centered ``size`` square in a ``width`` x ``height`` image."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def fit(img: Image.Image, contract: ModelContract) -> Image.Image:
    """Shorter side to resize_size (antialiased), then the center image_size square."""
    size, crop = resized_size(img.width, img.height, contract.resize_size), contract.image_size
    left, top = center_anchor(*size, crop)
    if size == img.size:
        return img.crop((left, top, left + crop, top + crop))
    # Resample only the square the crop keeps (40% less work at 224 of 256): the same filter at the same source
    # positions as resizing all of it, so the same pixels but for rounding (at most one grey level).
    sx, sy = img.width / size[0], img.height / size[1]
    box = (left * sx, top * sy, min((left + crop) * sx, img.width), min((top + crop) * sy, img.height))
    return img.resize((crop, crop), resample=_FILTERS[contract.interpolation], box=box)


def resize_and_crop(img: Image.Image, contract: ModelContract) -> np.ndarray:
    """RGB image -> uint8 array [3, image_size, image_size] as the contract prescribes."""
    return np.ascontiguousarray(np.asarray(fit(img, contract), dtype=np.uint8).transpose(2, 0, 1))


def prepare_image(data: bytes, contract: ModelContract, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> uint8 array [3, S, S]; raises InputError for unusable input."""
    img = decode_image(data, max_pixels=max_pixels, draft_size=contract.resize_size)
    return resize_and_crop(img, contract)
