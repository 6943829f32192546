"""Batched JPEG decoding next to the model: on a GPU, nvJPEG decodes a whole batch in one call.

The front checks each upload's JPEG header (no pixels decoded) and sends plain JPEGs to the model
service undecoded; there ``decode_batch`` decodes the batch with ``torchvision.io.decode_jpeg`` on
the model's device, then resizes and crops each image there as the contract prescribes. Everything
else (other formats, EXIF rotation, CMYK, progressive or oversized JPEGs) keeps the front's
Pillow path, which handles every case. A JPEG whose data turns out corrupt gets a NaN row, which the
front reports as a 400 for that image.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from service.contract import ModelContract

logger = logging.getLogger(__name__)

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
_EXIF_ORIENTATION = 0x0112


def batch_decodable(data: bytes, max_pixels: int) -> bool:
    """Whether ``data`` is a plain JPEG that decode_batch gives the same pixels as the Pillow path:
    baseline, RGB or grayscale, upright (no EXIF rotation), within ``max_pixels``. Reads the header only."""
    try:
        img = Image.open(io.BytesIO(data), formats=["JPEG"])
        width, height = img.size
        upright = img.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    progressive = img.info.get("progressive") or img.info.get("progression")
    return img.mode in ("RGB", "L") and 0 < width * height <= max_pixels and upright and not progressive


def resize_and_crop_tensor(image: torch.Tensor, contract: ModelContract) -> torch.Tensor:
    """uint8 [3, H, W] on any device -> uint8 [3, S, S]: shorter side to resize_size, center crop."""
    image = F.resize(image, [contract.resize_size], interpolation=_INTERPOLATION[contract.interpolation], antialias=True)
    return F.center_crop(image, [contract.image_size, contract.image_size])


def decode_batch(datas: list[bytes], contract: ModelContract, device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """JPEG bytes -> uint8 [N, 3, S, S] on ``device`` and the indices of images that failed to decode
    (their rows are zeros). One decode_jpeg call for the batch; per image only if that call fails."""
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    try:
        images: list[torch.Tensor | None] = list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        images = [_decode_one(data, device) for data in encoded]
    failed = [i for i, image in enumerate(images) if image is None]
    size = contract.image_size
    blank = torch.zeros((3, size, size), dtype=torch.uint8, device=device)
    return torch.stack([blank if image is None else resize_and_crop_tensor(image, contract) for image in images]), failed


def _decode_one(encoded: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        logger.info("a JPEG failed to decode: %s", str(exc).splitlines()[0][:200])
        return None


def mark_failed(probs: np.ndarray, failed: list[int]) -> np.ndarray:
    """Rows of images that could not be decoded become NaN, so the front can answer 400 for them."""
    if failed:
        probs = probs.copy()
        probs[failed] = np.nan
    return probs
