"""The model runner's explain queue and the front's gate, without a server or a network: one explain runs, a
bounded number wait, the rest are refused at once, and a wait that runs out gives its place up."""

from __future__ import annotations

import asyncio
import importlib.util
import threading

import pytest

from classifier.imaging import InputError
from service import explainer
from service.explainer import BUSY, UNAVAILABLE, Explained, Explainer, ExplainGate, _wants_png, thread_stat
from service.http.errors import ApiError
from service.settings import ServiceSettings


class _Blocking(Explainer):
    """An explainer whose work waits for the test's go."""

    def __init__(self, contract, **env: str) -> None:
        settings = ServiceSettings.from_env({f"CLASSIFIER_{k.upper()}": v for k, v in env.items()})
        super().__init__("m:1", contract, settings)
        self.go, self.started = threading.Event(), threading.Semaphore(0)

    def _run(self, data: bytes, target: int | None) -> Explained:
        self.started.release()
        self.go.wait(10)
        if data == b"bad":
            raise InputError("not_an_image", "not an image")
        return Explained(target=target or 0, png=data)


async def _started(explainer: _Blocking) -> None:
    assert await asyncio.to_thread(explainer.started.acquire, True, 10)


def test_one_runs_the_queue_waits_and_the_rest_are_refused_at_once(contract):
    async def scenario():
        explainer = _Blocking(contract, explain_queue="1", max_queue_wait_ms="10000")
        running = asyncio.create_task(explainer.explain(b"a", 1))
        await _started(explainer)
        queued = asyncio.create_task(explainer.explain(b"b", None))
        await asyncio.sleep(0.05)
        refused = await explainer.explain(b"c", None)
        assert refused.reason == BUSY and "already running or waiting" in refused.message
        explainer.go.set()
        first, second = await running, await queued
        assert (first.png, first.target, second.png) == (b"a", 1, b"b")
        assert explainer._pending == 0

    asyncio.run(scenario())


def test_a_request_not_taken_within_the_wait_gives_its_place_up(contract):
    async def scenario():
        explainer = _Blocking(contract, explain_queue="1", max_queue_wait_ms="100")
        running = asyncio.create_task(explainer.explain(b"a", None))
        await _started(explainer)
        late = await explainer.explain(b"b", None)  # still queued when its wait runs out
        assert late.reason == BUSY and "MAX_QUEUE_WAIT_MS" in late.message
        assert explainer._pending == 1  # its place is free again; the running one keeps its own
        explainer.go.set()
        assert (await running).png == b"a"  # taken in time, so it finishes however long it takes
        assert explainer._pending == 0

    asyncio.run(scenario())


def test_a_cancelled_request_frees_its_place_and_a_bad_image_is_an_answer(contract):
    async def scenario():
        explainer = _Blocking(contract, explain_queue="1", max_queue_wait_ms="10000")
        running = asyncio.create_task(explainer.explain(b"bad", None))
        await _started(explainer)
        queued = asyncio.create_task(explainer.explain(b"b", None))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert explainer._pending == 1
        explainer.go.set()
        bad = await running
        assert (bad.reason, bad.message) == ("not_an_image", "not an image")
        assert explainer._pending == 0

    asyncio.run(scenario())


def test_the_front_refuses_beyond_what_the_runners_take():
    gate = ExplainGate(ServiceSettings.from_env({"CLASSIFIER_MODEL_WORKERS": "2", "CLASSIFIER_EXPLAIN_QUEUE": "1"}))
    assert gate.admission.capacity == 4

    async def scenario():
        async with gate.enter(), gate.enter(), gate.enter(), gate.enter():
            with pytest.raises(ApiError) as refused:
                async with gate.enter():
                    pass
            assert (refused.value.status, refused.value.reason) == (503, BUSY)

    asyncio.run(scenario())
    assert gate.admission.in_flight == 0


def test_without_torch_explain_is_a_501_before_anything_is_read(monkeypatch):
    assert explainer.explain_installed()  # the test environment has torch and captum
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert not explainer.explain_installed()
    gate = ExplainGate(ServiceSettings.from_env({}))

    async def scenario():
        with pytest.raises(ApiError) as refused:
            async with gate.enter():
                raise AssertionError("the body must not run")
        assert (refused.value.status, refused.value.reason) == (501, UNAVAILABLE)
        assert "--build-arg TORCH" in refused.value.message

    asyncio.run(scenario())


def test_answers_without_an_explanation_become_the_right_error():
    with pytest.raises(ApiError) as busy:
        Explained(reason=BUSY, message="full").raise_for_error("a.jpg")
    assert (busy.value.status, busy.value.file) == (503, None)
    with pytest.raises(ApiError) as bad:
        Explained(reason="corrupt_image", message="truncated").raise_for_error("a.jpg")
    assert (bad.value.status, bad.value.reason, bad.value.file) == (400, "corrupt_image", "a.jpg")
    Explained(png=b"x").raise_for_error("a.jpg")  # an explanation: nothing raised


@pytest.mark.parametrize(
    ("accept", "png"),
    [
        ("image/png", True),
        ("application/json, image/png;q=0.5", False),  # JSON preferred
        ("image/png, application/json;q=0.9", True),
        ("image/png;q=0.3", True),  # JSON not acceptable at all
        ("image/*", True),
        ("image/png;q=inf", False),
        ("image/png;q=nan", False),
        ("*/*;q=0.5, image/png", True),
        ("image/png, */*", True),  # named outright: beats the wildcard at equal q
        ("image/*, image/png;q=0", False),  # the specific entry refuses it
        ("application/json;q=0, */*", True),
        ("IMAGE/PNG", True),
        ("image/png;q=0", False),
        ("application/json", False),
        ("", False),
        ("*/*", False),
    ],
)
def test_png_only_when_asked_for(accept, png):
    assert _wants_png(accept) is png


def test_thread_stat_reads_niceness_and_cpu_even_with_a_parenthesis_in_the_name():
    fields = ["S"] + ["0"] * 10 + ["150", "50"] + ["0"] * 3 + ["10"] + ["0"] * 30  # utime, stime; nice is field 19
    line = "4242 (odd) name) " + " ".join(fields)
    assert thread_stat(line) == (10, 200)
    with open("/proc/self/stat") as fh:
        nice, ticks = thread_stat(fh.read())
    assert nice >= 0 and ticks >= 0
