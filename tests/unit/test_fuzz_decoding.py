"""Property-based fuzzing of decoding and preprocessing: arbitrary bytes and mutated real images either
give the contract's tensor or raise the project's InputError, never anything else, in bounded time and
memory. (Issue 5's hostile-input fuzzing; the server-level corpus is a separate test.)"""

from __future__ import annotations

import resource

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classifier.imaging import InputError
from classifier.jpeg_batch import batch_decodable
from classifier.preprocessing import prepare_image
from tests.conftest import ODD_IMAGES

SEEDS = [p.read_bytes() for p in sorted(ODD_IMAGES.iterdir()) if p.suffix != ".md" and p.stat().st_size < 200_000]
MAX_PIXELS = 4_000_000
# The fixtures (a frozen contract, a number) hold no per-example state.
FUZZ = settings(
    max_examples=300,
    deadline=60_000,  # catches a hang (e.g. a bomb decoded in full), not slowness: examples take milliseconds
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def check(data: bytes, contract) -> None:
    """The contract every input must keep."""
    try:
        tensor = prepare_image(data, contract, max_pixels=MAX_PIXELS)
    except InputError as exc:
        assert exc.reason in {"empty", "not_an_image", "corrupt_image", "too_many_pixels"} and exc.message
    else:
        assert tensor.shape == (3, contract.image_size, contract.image_size) and tensor.dtype == np.uint8
    assert batch_decodable(data, MAX_PIXELS) in (True, False)  # the header check never raises either


@st.composite
def mutated(draw) -> bytes:
    """A real image file, truncated, bit-flipped, or with its header spliced onto another file's body."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "overwrite"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 32))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "splice":
        other = draw(st.sampled_from(SEEDS))
        cut = draw(st.integers(0, min(len(data), 2048)))
        return bytes(data[:cut]) + other[draw(st.integers(0, len(other))) :]
    start = draw(st.integers(0, min(len(data) - 1, 4096)))  # garble the header region
    junk = draw(st.binary(min_size=1, max_size=64))
    return bytes(data[:start]) + junk + bytes(data[start + len(junk) :])


@pytest.fixture(scope="module")
def peak_rss():
    """Peak RSS before the module's fuzzing; the last test compares the peak after it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@FUZZ
@given(data=st.binary(max_size=65_536))
def test_arbitrary_bytes(contract, peak_rss, data):
    check(data, contract)


@FUZZ
@given(data=mutated())
def test_mutated_real_images(contract, peak_rss, data):
    check(data, contract)


def test_fuzzing_stayed_within_memory(peak_rss):
    """No input made the decoder allocate anywhere near a decompression bomb's size (ru_maxrss is in KiB)."""
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_rss) / 1024
    assert grown_mib < 512
