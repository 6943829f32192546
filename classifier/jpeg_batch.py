"""Batched JPEG decoding next to the model: on a GPU, nvJPEG decodes a whole batch in one call.

The front checks each upload's JPEG header (no pixels decoded) and sends plain JPEGs to the model
service undecoded; there ``decode_batch`` decodes the batch with ``torchvision.io.decode_jpeg`` on
the model's device, then resizes and crops each image there as the contract prescribes. Everything
else (other formats, EXIF rotation, CMYK, progressive or oversized JPEGs) keeps the front's
Pillow path, which handles every case, and so does any JPEG the batch decoder rejects (its result is a
``JpegResult`` with an error and no scores; the front then decodes it with Pillow, which either
succeeds or names the problem in a 400).

The two paths give the same pixels, within one grey level of rounding, when Pillow needs no draft scaling
(images under about twice the resize size); above that they differ by a few grey levels. Images over
ENGINE_MAX_PIXELS stay on the Pillow path, which decodes them at reduced scale: a batch of full-size
decodes would take GPU memory in proportion to the pixels.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from classifier.contract import ModelContract
from classifier.device import Device

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ENGINE_MAX_PIXELS = 12_000_000  # a 4000 x 3000 phone photo; 16 of them are 576 MB decoded
_EXIF_ORIENTATION = 0x0112


def batch_decodable(data: bytes, max_pixels: int) -> bool:
    """Whether ``data`` is a plain JPEG for decode_batch: baseline, RGB or grayscale, upright (no EXIF
    rotation), within ``max_pixels`` and ENGINE_MAX_PIXELS. Reads the header only."""
    try:
        img = Image.open(io.BytesIO(data), formats=["JPEG"])
        width, height = img.size
        upright = img.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    progressive = img.info.get("progressive") or img.info.get("progression")
    pixels = width * height
    return img.mode in ("RGB", "L") and 0 < pixels <= min(max_pixels, ENGINE_MAX_PIXELS) and upright and not progressive


class JpegResult(BaseModel):
    """One image of a batch decoded next to the model: its row of the graph's output (probabilities, then the
    OOD score if the model has one), or why it could not be decoded."""

    scores: list[float] | None = None
    error: str | None = None


def decode_batch(datas: list[bytes], contract: ModelContract, device: Device) -> tuple[torch.Tensor, dict[int, str]]:
    """JPEG bytes -> uint8 [N, 3, S, S] on ``device``, and {index: error} for the images that failed to decode
    (their rows are zeros). One decode_jpeg call for the batch; per image only if that call fails."""
    import torch  # here, not above: only this path (the GPU's, or CLASSIFIER_JPEG_DECODE=engine) needs it
    from torchvision.io import ImageReadMode, decode_jpeg

    target = device.to_torch()
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    failed: dict[int, str] = {}
    try:
        images: list[torch.Tensor | None] = list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=target))
    except RuntimeError:
        images = []
        for i, one in enumerate(encoded):
            try:
                images.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=target))
            except RuntimeError as exc:
                failed[i] = str(exc).splitlines()[0][:200]
                logger.info("a JPEG failed to decode: %s", failed[i])
                images.append(None)
    size = contract.image_size
    blank = torch.zeros((3, size, size), dtype=torch.uint8, device=target)
    return torch.stack([blank if image is None else fit_tensor(image, contract) for image in images]), failed


def fit_tensor(image: torch.Tensor, contract: ModelContract) -> torch.Tensor:
    """classifier.preprocessing.fit for a uint8 tensor [3, H, W] on any device, with torchvision."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    interpolation = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
    image = F.resize(image, [contract.resize_size], interpolation=interpolation[contract.interpolation], antialias=True)
    return F.center_crop(image, [contract.image_size, contract.image_size])


def classify_jpegs(
    datas: list[bytes], contract: ModelContract, device: Device, predict: Callable[[torch.Tensor], np.ndarray]
) -> list[JpegResult]:
    """Decode ``datas`` as one batch, run ``predict`` on it, and give each image its result in order."""
    batch, failed = decode_batch(datas, contract, device)
    probs = predict(batch)
    return [
        JpegResult(error=failed[i]) if i in failed else JpegResult(scores=probs[i].tolist()) for i in range(len(datas))
    ]
