"""Batched JPEG decoding next to the model: on a GPU, nvJPEG decodes a whole batch in one call.

The front checks each upload's JPEG header (no pixels decoded) and sends plain JPEGs to the model
service undecoded; there ``decode_batch`` decodes the batch with ``torchvision.io.decode_jpeg`` on
the model's device, then resizes and crops each image there as the contract prescribes. Everything
else (other formats, EXIF rotation, CMYK, progressive or oversized JPEGs) keeps the front's
Pillow path, which handles every case, and so does any JPEG the batch decoder rejects (it gets a NaN
row; the front then decodes it with Pillow, which either succeeds or names the problem in a 400).

The two paths give the same pixels when Pillow needs no draft scaling (images under about twice the
resize size); above that they differ by a few grey levels. Images over ENGINE_MAX_PIXELS stay on
the Pillow path, which decodes them at reduced scale: a batch of full-size decodes would take GPU
memory in proportion to the pixels.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from service.contract import ModelContract
from service.preprocessing import fit

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
    return torch.stack([blank if image is None else fit(image, contract) for image in images]), failed


def _decode_one(encoded: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        logger.info("a JPEG failed to decode: %s", str(exc).splitlines()[0][:200])
        return None


def mark_failed(probs: np.ndarray, failed: list[int]) -> np.ndarray:
    """Rows of images that could not be decoded become NaN, so the front decodes them itself."""
    if failed:
        probs = probs.copy()
        probs[failed] = np.nan
    return probs
