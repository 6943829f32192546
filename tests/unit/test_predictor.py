"""Routing uploads to the two decode paths and merging the answers, with fake model calls (no server)."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException

from classifier.jpeg_batch import JpegResult
from classifier.store import ModelDescription
from service.http.errors import ApiError
from service.http.uploads import Upload
from service.predictor import Predictor
from service.settings import ServiceSettings


class FakeModel:
    """Records its calls; class 0's probability encodes the input, so results can be traced to images."""

    def __init__(self, fail_jpegs: set[bytes] = frozenset(), error: Exception | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail_jpegs, self.error = fail_jpegs, error

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(("infer", len(batch)))
        if self.error:
            raise self.error
        return np.array([[0.25, 0.75]] * len(batch), dtype=np.float32)

    async def infer_jpeg(self, datas: list[bytes]) -> list[JpegResult]:
        self.calls.append(("infer_jpeg", len(datas)))
        return [JpegResult(error="corrupt") if d in self.fail_jpegs else JpegResult(scores=[0.9, 0.1]) for d in datas]


def classify(contract, uploads, fake, *, engine_decodes=True, many=True):
    model = ModelDescription("m:1", contract, {}, "w", {})
    classifier = Predictor(
        model, ServiceSettings(), fake.infer, fake.infer_jpeg, engine_decodes=engine_decodes, device="cpu"
    )
    return asyncio.run(classifier.classify(uploads, None, many=many))


def _front(contract, model: FakeModel, settings: ServiceSettings, *, device: str = "cpu") -> Predictor:
    """A Predictor for a model of ``contract`` over a fake model service (no server), decoding in the front."""
    description = ModelDescription("m:1", contract, {}, "w", {})
    return Predictor(description, settings, model.infer, model.infer_jpeg, engine_decodes=False, device=device)


@pytest.fixture
def files(odd_image):
    return {name: Upload(name, odd_image(name)) for name in ("hopper.jpg", "hopper.png", "hopper_orientation_6.jpg")}


def test_plain_jpegs_go_to_the_model_undecoded_the_rest_decode_here(contract, files):
    fake = FakeModel()
    results = classify(contract, [files["hopper.png"], files["hopper.jpg"], files["hopper_orientation_6.jpg"]], fake)
    assert sorted(fake.calls) == [("infer", 2), ("infer_jpeg", 1)]
    assert [r.filename for r in results] == ["hopper.png", "hopper.jpg", "hopper_orientation_6.jpg"]
    assert [r.top_k[0].probability for r in results] == [0.75, 0.9, 0.75]  # each answer at its own position


def test_front_decoding_only_when_the_engine_does_not_decode(contract, files):
    fake = FakeModel()
    classify(contract, [files["hopper.jpg"], files["hopper.png"]], fake, engine_decodes=False)
    assert fake.calls == [("infer", 2)]


def test_a_jpeg_the_batch_decoder_rejects_is_decoded_here(contract, files):
    fake = FakeModel(fail_jpegs={files["hopper.jpg"].data})
    (result,) = classify(contract, [files["hopper.jpg"]], fake, many=False)
    assert fake.calls == [("infer_jpeg", 1), ("infer", 1)] and result.probability == 0.75


def test_the_first_bad_image_in_order_is_reported(contract, files, odd_image):
    truncated = odd_image("hopper.jpg")[:600]  # a valid header, so it goes to the batch decoder, which fails
    fake = FakeModel(fail_jpegs={truncated})
    uploads = [files["hopper.png"], Upload("cut.jpg", truncated), Upload("bad.png", odd_image("broken.png"))]
    with pytest.raises(ApiError) as info:
        classify(contract, uploads, fake)
    assert (info.value.status, info.value.reason, info.value.file, info.value.index) == (
        400,
        "corrupt_image",
        "cut.jpg",
        1,
    )
    assert ("infer", 1) not in fake.calls  # a failing request does not run the model on its good images


@pytest.mark.parametrize(
    "error, reason",
    [
        (BentoMLException("busy", error_code=503), "overloaded"),
        (BentoMLException("boom"), "model_unavailable"),
        (httpx.ConnectError("refused"), "model_unavailable"),
        (aiohttp.ServerDisconnectedError(), "model_unavailable"),
    ],  # the runner killed mid-request
)
def test_model_service_failures_are_503(contract, files, error, reason):
    with pytest.raises(ApiError) as info:
        classify(contract, [files["hopper.png"]], FakeModel(error=error))
    assert (info.value.status, info.value.reason) == (503, reason)


def test_nan_from_the_model_is_a_bug_not_a_bad_image(contract, files):
    class NanModel(FakeModel):
        async def infer(self, batch):
            return np.full((len(batch), 2), np.nan, dtype=np.float32)

    with pytest.raises(RuntimeError, match="NaN"):
        classify(contract, [files["hopper.png"]], NanModel())


def test_requests_beyond_capacity_are_shed_with_503(contract, files):
    class SlowModel(FakeModel):
        async def infer(self, batch):
            await asyncio.sleep(0.2)
            return await super().infer(batch)

    settings = ServiceSettings(max_images=1, max_inflight_images=1, max_queue=1, max_queue_wait_ms=5_000)
    classifier = Predictor(
        ModelDescription("m:1", contract, {}, "w", {}),
        settings,
        SlowModel().infer,
        SlowModel().infer_jpeg,
        engine_decodes=False,
        device="cpu",
    )

    async def three_at_once():
        return await asyncio.gather(
            *(classifier.classify([files["hopper.png"]], None, many=False) for _ in range(3)), return_exceptions=True
        )

    outcomes = asyncio.run(three_at_once())
    shed = [o for o in outcomes if isinstance(o, ApiError)]
    assert len(shed) == 1 and (shed[0].status, shed[0].reason) == (503, "overloaded")  # one running, one queued
    assert classifier.admission.in_flight == 0


def test_bodies_that_do_not_fit_the_budget_are_shed_before_they_are_read(contract):
    settings = ServiceSettings(max_inflight_body_bytes=3_000_000, max_body_bytes=2_000_000)
    classifier = _front(contract, FakeModel(), settings)
    with classifier.receiving({"content-length": "1500000"}):
        assert classifier.bodies.held == 1_500_000
        with classifier.receiving({"content-length": "1000000"}):  # fits beside it
            with pytest.raises(ApiError) as shed:
                with classifier.receiving({"content-length": "600000"}):
                    pass
            assert (shed.value.status, shed.value.reason) == (503, "overloaded")
            assert "request bodies" in shed.value.message
        for headers in ({}, {"content-length": "1", "transfer-encoding": "chunked"}):
            with pytest.raises(ApiError):  # no Content-Length, or chunked (which overrides it): the body limit, 2 MB
                with classifier.receiving(headers):
                    pass
    assert classifier.bodies.held == 0
    with pytest.raises(RuntimeError), classifier.receiving({"content-length": "10"}):  # a failure gives bytes back
        raise RuntimeError
    assert classifier.bodies.held == 0
    with classifier.receiving({"content-length": "99999999"}):  # alone: let in (read_body answers 413)
        assert classifier.bodies.held == 2_000_000
    for odd in ("\u00b2", "9" * 5000):  # not a number (read_body answers 400): the limit
        with classifier.receiving({"content-length": odd}):
            assert classifier.bodies.held == 2_000_000


def test_concurrent_requests_share_model_calls_and_a_bad_image_fails_only_its_own(contract, files, odd_image):
    """Eight requests at once: decoded in groups and sent to the model together (service/coalescing.py), each
    answered for its own image; the one bad image among them is that request's 400 alone."""

    class SlowModel(FakeModel):
        async def infer(self, batch):
            self.calls.append(("infer", len(batch)))
            await asyncio.sleep(0.05)  # the first call is in flight while the others arrive
            return np.stack([np.array([i / 100, 1 - i / 100], dtype=np.float32) for i in batch[:, 0, 0, 0]])

    fake = SlowModel()
    classifier = _front(contract, fake, ServiceSettings(model_workers=1, decode_concurrency=1))
    solid = [Upload(f"{v}.png", _png(v)) for v in range(1, 8)]
    bad = Upload("broken.png", odd_image("broken.png"))

    async def all_at_once():
        return await asyncio.gather(
            *(classifier.classify([u], None, many=False) for u in [*solid[:3], bad, *solid[3:]]),
            return_exceptions=True,
        )

    outcomes = asyncio.run(all_at_once())
    assert isinstance(outcomes[3], ApiError) and (outcomes[3].status, outcomes[3].file) == (400, "broken.png")
    good = [o for i, o in enumerate(outcomes) if i != 3]
    # each answer is its own image's: class 0's probability is the image's grey level / 100
    assert [round(r[0].top_k[-1].probability * 100) for r in good] == list(range(1, 8))
    assert sum(n for _, n in fake.calls) == 7 and len(fake.calls) < 7  # fewer calls than images


def _png(level: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (level, level, level)).save(out, "PNG")
    return out.getvalue()


def test_a_requests_images_decode_on_several_threads(contract, monkeypatch):
    """One job per image, spread over CLASSIFIER_DECODE_CONCURRENCY threads: a many-image request is not decoded
    one image after another in a single thread."""
    import threading
    import time

    threads = set()

    def slow_prepare(data, contract, max_pixels):
        threads.add(threading.get_ident())
        time.sleep(0.05)  # as Pillow releases the GIL while it decodes: the threads overlap
        return np.zeros((3, contract.image_size, contract.image_size), dtype=np.uint8)

    monkeypatch.setattr("service.predictor.prepare_image", slow_prepare)
    uploads = [Upload(f"{i}.png", b"not read") for i in range(8)]
    fake = FakeModel()
    classifier = _front(contract, fake, ServiceSettings(decode_concurrency=4))
    results = asyncio.run(classifier.classify(uploads, None, many=True))
    assert len(results) == 8 and fake.calls == [("infer", 8)]
    assert len(threads) == 4  # at once, and never more than the setting


@pytest.mark.parametrize(("device", "most"), [("cpu", 1), ("cuda", 2)])
def test_calls_in_flight_are_one_per_model_worker_and_one_more_on_a_gpu(contract, device, most):
    """On the CPU the front keeps one call per model worker in flight; on a GPU one more waits at the runner.
    Requests arriving meanwhile join the next call either way."""
    in_flight, peak = 0, 0

    async def scenario():
        nonlocal in_flight, peak
        release = asyncio.Event()

        class HeldModel(FakeModel):
            async def infer(self, batch):
                nonlocal in_flight, peak
                self.calls.append(("infer", len(batch)))
                in_flight += 1
                peak = max(peak, in_flight)
                await release.wait()  # the model is busy until the test lets go
                in_flight -= 1
                return np.zeros((len(batch), 2), dtype=np.float32)

        fake = HeldModel()
        classifier = _front(contract, fake, ServiceSettings(model_workers=1, decode_concurrency=1), device=device)
        requests = [
            asyncio.ensure_future(classifier.classify([Upload(f"{v}.png", _png(v))], None, many=False))
            for v in range(1, 9)
        ]
        for _ in range(400):  # until the calls allowed are under way (decoding runs in a thread)
            await asyncio.sleep(0.005)
            if in_flight >= most:
                break
        await asyncio.sleep(0.1)  # time enough for a call beyond the allowance to start, were one allowed
        release.set()
        return await asyncio.gather(*requests), len(fake.calls)

    answers, calls = asyncio.run(scenario())
    assert len(answers) == 8 and calls < 8  # the requests that waited shared calls
    assert peak == most
