"""Decoding real odd files (tests/data/odd-images, from Pillow's test suite)."""

import io

import numpy as np
import pytest
from PIL import Image

from classifier.imaging import InputError, decode_image

DECODABLE = [
    "hopper.jpg",
    "hopper.png",
    "hopper.webp",
    "hopper.gif",
    "hopper.tif",
    "hopper.bmp",
    "hopper_orientation_6.jpg",
    "hopper_orientation_8.jpg",
    "orientation_rectangle.jpg",
    "pil_sample_cmyk.jpg",
    "hopper_gray.jpg",
    "jfif_unit_cm.jpg",
    "16bit.cropped.tif",
    "uncompressed_la.png",
    "p_16.png",
    "pil123rgba.png",
    "rgb_trns.png",
    "tRNS_null_1x1.png",
    "app13-multiple.jpg",
    "hopper_16bit_qtables.jpg",
    "exif-dpi-zerodivision.jpg",
    "junk_jpeg_header.jpg",
]
REJECTED = {
    "truncated_jpeg.jpg": "corrupt_image",
    "broken_data_stream.png": "corrupt_image",
    "broken.png": "not_an_image",
    "decompression_bomb.gif": "too_many_pixels",
}


def _arr(img):
    return np.asarray(img, dtype=np.float32)


@pytest.mark.parametrize("name", DECODABLE)
def test_odd_images_decode_to_8bit_rgb(odd_image, name):
    img = decode_image(odd_image(name))
    assert img.mode == "RGB"
    assert img.size[0] >= 1 and img.size[1] >= 1


@pytest.mark.parametrize("name, reason", sorted(REJECTED.items()))
def test_broken_images_raise_input_error_with_reason(odd_image, name, reason):
    with pytest.raises(InputError) as info:
        decode_image(odd_image(name))
    assert info.value.reason == reason
    assert info.value.message


def test_decompression_bomb_is_rejected_without_decoding(odd_image, monkeypatch):
    loads = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self, *a, **k: loads.append(self.size) or real_load(self, *a, **k))
    with pytest.raises(InputError) as info:
        decode_image(odd_image("decompression_bomb.gif"), max_pixels=1234567)
    assert (
        info.value.reason == "too_many_pixels" and f"over {2 * Image.MAX_IMAGE_PIXELS:,} pixels" in info.value.message
    )
    assert not [
        size for size in loads if size[0] * size[1] > 100_000_000
    ]  # refused from its header: 4.3 GP never decoded


def test_pixel_cap_is_checked_from_the_header(odd_image):
    with pytest.raises(InputError, match="over the limit") as info:
        decode_image(odd_image("hopper.png"), max_pixels=128 * 128 - 1)
    assert info.value.reason == "too_many_pixels"
    decode_image(odd_image("hopper.png"), max_pixels=128 * 128)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"<html>hi</html>", "not_an_image"),
        (b"\x89PNG\r\n\x1a\n", "not_an_image"),  # a signature and nothing else
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not_an_image"),  # EPS: a format we never decode
    ],
    ids=["empty", "html", "bare-png-signature", "eps"],
)
def test_non_images(data, reason):
    with pytest.raises(InputError) as info:
        decode_image(data)
    assert info.value.reason == reason


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_warning_limit_is_not_our_cap():
    buf = io.BytesIO()
    Image.new("L", (9500, 9500)).save(buf, format="PNG")  # 90 MP: over Pillow's warning threshold
    assert decode_image(buf.getvalue(), max_pixels=100_000_000).size == (9500, 9500)
    with pytest.raises(InputError, match="over the limit"):
        decode_image(buf.getvalue(), max_pixels=90_000_000)


@pytest.mark.parametrize("name", ["hopper_orientation_6.jpg", "hopper_orientation_8.jpg"])
def test_exif_orientation_is_applied(odd_image, name):
    upright = _arr(decode_image(odd_image("hopper.jpg")))
    decoded = _arr(decode_image(odd_image(name)))
    stored = _arr(Image.open(io.BytesIO(odd_image(name))).convert("RGB"))
    # Rotated back to upright it matches the reference photo far better than as stored.
    assert np.abs(decoded - upright).mean() < 0.5 * np.abs(stored - upright).mean()


def test_orientation_rectangle_is_turned(odd_image):
    assert Image.open(io.BytesIO(odd_image("orientation_rectangle.jpg"))).size == (2, 1)
    assert decode_image(odd_image("orientation_rectangle.jpg")).size == (1, 2)


def test_sixteen_bit_gray_is_rescaled_not_clipped(odd_image):
    raw = Image.open(io.BytesIO(odd_image("16bit.cropped.tif")))
    assert raw.mode == "I;16"
    out = _arr(decode_image(odd_image("16bit.cropped.tif")))
    expected = np.clip(np.asarray(raw, dtype=np.float64) / 257.0, 0, 255).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 1], expected)
    # PIL's own conversion clips every 16-bit value above 255 to white.
    assert (_arr(raw.convert("RGB")) == 255).all() and (out < 10).all()


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    out = decode_image(buf.getvalue())
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_cmyk_becomes_plausible_rgb(odd_image):
    cmyk = Image.open(io.BytesIO(odd_image("pil_sample_cmyk.jpg")))
    assert cmyk.mode == "CMYK"
    out = _arr(decode_image(odd_image("pil_sample_cmyk.jpg")))
    # The sample is red lettering on black: bright pixels must be red, not inverted or cyan.
    bright = out[out.max(axis=2) > 128]
    assert len(bright) > 100
    assert (bright[:, 0] > 200).mean() > 0.9 and (bright[:, 1] < 80).mean() > 0.9


def test_same_photo_in_six_formats_decodes_alike(odd_image):
    ref = _arr(decode_image(odd_image("hopper.png")))
    for name in ("hopper.jpg", "hopper.webp", "hopper.gif", "hopper.tif", "hopper.bmp"):
        assert np.abs(_arr(decode_image(odd_image(name))) - ref).mean() < 12, name


def test_draft_decodes_large_jpeg_smaller_but_not_below_target(odd_image):
    full = decode_image(odd_image("junk_jpeg_header.jpg"))
    small = decode_image(odd_image("junk_jpeg_header.jpg"), draft_size=200)
    assert full.size == (1024, 768)
    assert min(small.size) >= 200 and small.size[0] < full.size[0]
