"""Batched JPEG decoding next to the model, run here on the CPU (on a GPU it is the same code with device="cuda")."""

import numpy as np
import pytest
import torch

from classifier.device import Device
from classifier.jpeg_batch import JpegResult, batch_decodable, classify_jpegs, decode_batch
from classifier.preprocessing import prepare_image
from tests.conftest import ODD_IMAGES

CPU = Device("cpu")
PHOTOS = sorted((ODD_IMAGES.parents[2] / "loadtests" / "photos").glob("*.jpg"))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("hopper.jpg", True),
        ("hopper_gray.jpg", True),
        ("hopper_orientation_6.jpg", False),  # EXIF rotation: the Pillow path turns it upright
        ("pil_sample_cmyk.jpg", False),
        ("app13-multiple.jpg", False),  # progressive
        ("hopper.png", False),
        ("decompression_bomb.gif", False),
        ("broken.png", False),
    ],
)
def test_only_plain_jpegs_go_to_the_batch_decoder(odd_image, name, expected):
    assert batch_decodable(odd_image(name), max_pixels=40_000_000) is expected


def test_the_pixel_limit_applies_before_decoding(odd_image):
    assert not batch_decodable(odd_image("hopper.jpg"), max_pixels=128 * 128 - 1)
    assert not batch_decodable(b"", max_pixels=10)


def test_batch_decoding_matches_the_pillow_path(contract):
    """At 224 px these photos need no JPEG draft scaling, so both paths see the same pixels. (Where Pillow
    drafts a large photo down first, the two differ by a few grey levels on average.)"""
    contract = contract.model_copy(update={"image_size": 224, "resize_size": 256})
    datas = [p.read_bytes() for p in PHOTOS]
    batch, failed = decode_batch(datas, contract, CPU)
    assert failed == {} and batch.shape == (len(datas), 3, 224, 224) and batch.dtype == torch.uint8
    expected = torch.from_numpy(np.stack([prepare_image(d, contract) for d in datas]))
    assert (batch.float() - expected.float()).abs().mean() < 0.5


def test_a_corrupt_jpeg_fails_alone(contract):
    good = PHOTOS[0].read_bytes()
    batch, failed = decode_batch([good, good[: len(good) // 3], good], contract, CPU)
    assert list(failed) == [1] and failed[1]
    assert (batch[1] == 0).all() and torch.equal(batch[0], batch[2]) and batch[0].float().std() > 10


def test_each_image_gets_its_probabilities_or_its_error(contract):
    good = PHOTOS[0].read_bytes()
    seen = []

    def predict(batch):
        seen.append(len(batch))
        return np.tile(np.array([[0.25, 0.75]], np.float32), (len(batch), 1))

    results = classify_jpegs([good, good[: len(good) // 3], good], contract, CPU, predict)
    assert seen == [3]  # one model call for the batch
    assert [r.scores for r in results] == [[0.25, 0.75], None, [0.25, 0.75]]
    assert results[1].error and results[0].error is None
    assert JpegResult.model_validate(results[1].model_dump()) == results[1]  # what crosses to the front
