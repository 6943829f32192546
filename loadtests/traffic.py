"""The requests the load tests send, built once from real photos: pure functions, no locust here.

Realistic traffic mixes single-image and multi-image requests over JPEGs from 100 px to a few
megapixels (real photos re-encoded at several sizes), plus a configurable share of malformed
requests that must get their documented 4xx.
"""

from __future__ import annotations

import io
import json
import random
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from urllib3 import encode_multipart_formdata

PHOTOS = Path(__file__).parent / "photos"
SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"  # 397 real photos
DEFAULT_SIZES = (100, 320, 640, 1280, 2048)  # longest side in pixels; 2048 x 1536 is 3 MP
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Payload:
    """One ready-to-send request body and what the service must answer to it."""

    label: str  # the name locust reports it under
    body: bytes
    content_type: str
    images: int  # images it carries (0 for a malformed request)
    status: int = 200
    reason: str | None = None  # the error reason expected with a 4xx
    headers: tuple[tuple[str, str], ...] = ()  # besides Content-Type


def default_photos() -> Path:
    """The benchmarks' photos: ../shared/data/hymenoptera_data where present, else the project's few."""
    return SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else PHOTOS


def photo_files(folder: Path) -> list[Path]:
    """The photos under ``folder`` (recursively), sorted; ValueError if there are none."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no .jpg/.jpeg/.png photos under {folder}")
    return files


def resized_jpeg(data: bytes, long_side: int, quality: int = 90) -> bytes:
    """``data`` re-encoded as an RGB JPEG whose longer side is ``long_side`` (up- or downscaled)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = long_side / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def multipart(field: str, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with ``files`` under ``field``, and its content type."""
    return encode_multipart_formdata([(field, (name, data, "image/jpeg")) for name, data in files])


def malformed_payloads(photo: bytes) -> list[Payload]:
    """Bad requests a public endpoint meets, with the 4xx and reason /v1/predict answers each with."""
    rng = random.Random(0)
    noise = bytes(rng.getrandbits(8) for _ in range(4096))
    return [
        Payload("malformed: random bytes", *multipart("image", [("noise.jpg", noise)]), 0, 400, "not_an_image"),
        Payload(
            "malformed: truncated jpeg",
            *multipart("image", [("cut.jpg", photo[: len(photo) // 2])]),
            0,
            400,
            "corrupt_image",
        ),
        Payload(
            "malformed: html as image", b"<html><body>not a photo</body></html>", "image/jpeg", 0, 400, "not_an_image"
        ),
        Payload("malformed: empty body", b"", "image/jpeg", 0, 400, "empty"),
        Payload(
            "malformed: wrong content type",
            b'{"image": "cat.jpg"}',
            "application/json",
            0,
            415,
            "unsupported_media_type",
        ),
    ]


@dataclass(frozen=True)
class Traffic:
    """A request mix: pick() draws single-image, multi-image or malformed requests at the given shares."""

    singles: tuple[Payload, ...]
    batches: tuple[Payload, ...]
    malformed: tuple[Payload, ...]
    batch_share: float = 0.2
    malformed_share: float = 0.05

    def pick(self, rng: random.Random) -> Payload:
        draw = rng.random()
        if draw < self.malformed_share and self.malformed:
            return rng.choice(self.malformed)
        if draw < self.malformed_share + self.batch_share and self.batches:
            return rng.choice(self.batches)
        return rng.choice(self.singles)


def realistic_traffic(
    photos: list[Path],
    *,
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    batch_images: int = 4,
    batch_share: float = 0.2,
    malformed_share: float = 0.05,
) -> Traffic:
    """Every photo at every size as a single-image request to /v1/predict; multi-image requests of
    ``batch_images`` mixed sizes to /v1/predict/batch; and the malformed requests."""
    if not 0 <= batch_share + malformed_share <= 1:
        raise ValueError("batch_share + malformed_share must be between 0 and 1")
    ladder = [(f"{p.stem}-{size}px.jpg", resized_jpeg(p.read_bytes(), size)) for p in photos for size in sizes]
    singles = tuple(
        Payload(f"single {name.rsplit('-', 1)[1][:-4]}", *multipart("image", [(name, data)]), 1)
        for name, data in ladder
    )
    rng = random.Random(0)
    batches = (
        tuple(
            Payload(
                f"batch of {batch_images}",
                *multipart("images", rng.sample(ladder, min(batch_images, len(ladder)))),
                min(batch_images, len(ladder)),
            )
            for _ in range(max(1, len(ladder) // 2))
        )
        if batch_images > 0
        else ()
    )
    return Traffic(singles, batches, tuple(malformed_payloads(photos[0].read_bytes())), batch_share, malformed_share)


def photo_traffic(
    photos: list[Path], field: str = "image", sizes: tuple[int, ...] = (), body: str = "multipart"
) -> Traffic:
    """The benchmark's traffic: one photo per request, as it is or, with ``sizes``, re-encoded at each of those
    longest sides; ``body`` "multipart" (in ``field``) or "triton" (Triton's binary tensor extension)."""
    if sizes:
        files = [(f"{p.stem}-{size}px.jpg", resized_jpeg(p.read_bytes(), size)) for p in photos for size in sizes]
    else:
        files = [(p.name, p.read_bytes()) for p in photos]
    if body == "triton":
        singles = tuple(_triton_payload(data) for _, data in files)
    elif body == "multipart":
        singles = tuple(Payload("photo", *multipart(field, [(name, data)]), 1) for name, data in files)
    else:
        raise ValueError(f"unknown body {body!r}: multipart or triton")
    return Traffic(singles, (), (), batch_share=0.0, malformed_share=0.0)


def triton_request(photo: bytes, tensor: str = "image", output: str = "probabilities") -> tuple[bytes, dict[str, str]]:
    """One photo as a BYTES tensor in Triton's binary extension (no base64), and the request's headers."""
    header = {
        "inputs": [
            {"name": tensor, "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(photo)}}
        ],
        "outputs": [{"name": output, "parameters": {"binary_data": False}}],
    }
    head = json.dumps(header).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    return head + struct.pack("<I", len(photo)) + photo, headers


def _triton_payload(photo: bytes) -> Payload:
    body, headers = triton_request(photo)
    content_type = headers.pop("Content-Type")
    return Payload("photo", body, content_type, 1, headers=tuple(headers.items()))
