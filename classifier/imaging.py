"""Bytes to a validated, upright RGB image.

Used by the service on every request and by training on every file, so an image is read
the same way in both. Every failure is an ``InputError`` carrying a stable ``reason`` code.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
# Only these decoders ever see untrusted bytes (Pillow would otherwise also try EPS, FITS, PSD, ...).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")  # JPEG covers MPO (multi-picture phone JPEGs)

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class InputError(ValueError):
    """An input that cannot be used as an image.

    ``reason`` is a short stable code (metrics label, API field); the message says what
    was wrong in words a client can act on.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode ``data`` into an upright 8-bit RGB image.

    The pixel count is checked from the header before any pixel is decoded. ``draft_size``
    lets JPEG decode at a reduced scale whose both sides stay >= ``draft_size`` (cheap
    downscaling for large photos). Raises InputError on anything that is not a decodable
    image within the limits.
    """
    if not data:
        raise InputError("empty", "the image is empty (0 bytes)")
    img = _open(data, max_pixels)
    if draft_size is not None and img.format == "JPEG":
        img.draft(img.mode, (draft_size, draft_size))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError("corrupt_image", f"the {img.format or 'image'} data is truncated or corrupt ({exc})") from exc
    return to_rgb(_upright(img))


def _open(data: bytes, max_pixels: int) -> Image.Image:
    Image.init()  # registers every plugin once (WEBP and TIFF are not loaded eagerly); cheap afterwards
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own hard cap, above our default limits
        cap = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # where Pillow refuses to open an image at all
        raise InputError(
            "too_many_pixels",
            f"the image declares over {cap:,} pixels, more than can be decoded safely (the limit is {max_pixels:,})",
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            "not_an_image", f"the data is not an image in a supported format ({', '.join(FORMATS)})"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError("corrupt_image", f"the image header is corrupt ({exc})") from exc
    width, height = img.size
    if width < 1 or height < 1:
        raise InputError("corrupt_image", f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise InputError(
            "too_many_pixels",
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",
        )
    return img


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, in place; a broken EXIF block is ignored (pixels already turned stay turned)."""
    try:
        # In place: otherwise Pillow returns a copy even of an upright image (160 MB for a 40 MP one).
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF raises many types; pixels are still fine
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16-bit and 32-bit integer grayscale are rescaled (PIL's own conversion would clip them
    to white); transparency is composited onto white rather than dropped, since the colour
    under fully transparent pixels is arbitrary.
    """
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # "I" is 32-bit and says nothing of its range: treat it as 16-bit only when it uses it.
        scale = 257.0 if img.mode in _SIXTEEN_BIT_MODES or arr.max(initial=0) > 255 else 1.0
        img = Image.fromarray(np.clip(arr / scale, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")
