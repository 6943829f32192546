"""The admission gate: capacity in images, a bounded FIFO queue, a bounded wait, no leaked slots."""

from __future__ import annotations

import asyncio

import pytest

from service.admission import Admission, BodyBudget, Overloaded


async def hold(admission: Admission, images: int, release: asyncio.Event, log: list, name: str) -> None:
    async with admission.admit(images):
        log.append(name)
        await release.wait()


def run(coro):
    return asyncio.run(coro)


def test_requests_within_capacity_are_admitted_at_once():
    async def main():
        gate, release, log = Admission(capacity=4, max_queue=0, max_wait_s=1), asyncio.Event(), []
        tasks = [asyncio.create_task(hold(gate, 2, release, log, n)) for n in "ab"]
        await asyncio.sleep(0.01)
        assert log == ["a", "b"] and gate.in_flight == 4 and gate.queued == 0
        release.set()
        await asyncio.gather(*tasks)
        assert gate.in_flight == 0

    run(main())


def test_a_full_queue_sheds_at_once():
    async def main():
        gate, release, log = Admission(capacity=1, max_queue=1, max_wait_s=60), asyncio.Event(), []
        first = asyncio.create_task(hold(gate, 1, release, log, "a"))
        queued = asyncio.create_task(hold(gate, 1, release, log, "b"))
        await asyncio.sleep(0.01)
        assert gate.full
        with pytest.raises(Overloaded) as info:  # raised before any wait: the test would hang for 60 s otherwise
            async with gate.admit(1):
                pass
        assert info.value.reason == "queue_full"
        release.set()
        await asyncio.gather(first, queued)
        assert log == ["a", "b"] and gate.in_flight == 0 and gate.queued == 0 and not gate.full

    run(asyncio.wait_for(main(), 30))


def test_waiting_too_long_is_shed_and_frees_its_place():
    async def main():
        gate, release, log = Admission(capacity=1, max_queue=4, max_wait_s=0.05), asyncio.Event(), []
        first = asyncio.create_task(hold(gate, 1, release, log, "a"))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as info:
            async with gate.admit(1):
                pass
        assert info.value.reason == "queue_timeout" and gate.queued == 0
        release.set()
        await first
        async with gate.admit(1):  # the slot is free again
            assert gate.in_flight == 1
        assert gate.in_flight == 0

    run(main())


def test_fifo_a_large_request_is_not_starved_by_small_ones():
    async def main():
        gate, release, log = Admission(capacity=4, max_queue=8, max_wait_s=5), asyncio.Event(), []
        small = asyncio.Event()
        first = asyncio.create_task(hold(gate, 2, small, log, "first"))
        await asyncio.sleep(0.01)
        large = asyncio.create_task(hold(gate, 4, release, log, "large"))
        await asyncio.sleep(0.01)
        later = asyncio.create_task(hold(gate, 1, release, log, "later"))  # would fit now, but waits its turn
        await asyncio.sleep(0.01)
        assert log == ["first"] and gate.queued == 2
        small.set()
        await asyncio.sleep(0.01)
        assert log == ["first", "large"]
        release.set()
        await asyncio.gather(first, large, later)
        assert log == ["first", "large", "later"] and gate.in_flight == 0

    run(main())


def test_a_client_that_goes_away_while_queued_leaves_no_trace():
    async def main():
        gate, release, log = Admission(capacity=2, max_queue=4, max_wait_s=5), asyncio.Event(), []
        first = asyncio.create_task(hold(gate, 2, release, log, "a"))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(hold(gate, 2, release, log, "gone"))
        behind = asyncio.create_task(hold(gate, 1, release, log, "behind"))
        await asyncio.sleep(0.01)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert gate.queued == 1
        release.set()
        await asyncio.gather(first, behind)
        assert log == ["a", "behind"] and gate.in_flight == 0 and gate.queued == 0

    run(main())


def test_slots_are_released_when_the_work_fails():
    async def main():
        gate = Admission(capacity=2, max_queue=0, max_wait_s=1)
        with pytest.raises(RuntimeError):
            async with gate.admit(2):
                raise RuntimeError("the model failed")
        assert gate.in_flight == 0

    run(main())


def test_observer_sees_every_change():
    async def main():
        seen = []
        gate = Admission(capacity=1, max_queue=2, max_wait_s=5, observe=lambda a, q: seen.append((a, q)))
        release, log = asyncio.Event(), []
        tasks = [asyncio.create_task(hold(gate, 1, release, log, n)) for n in "ab"]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks)
        return seen

    assert run(main()) == [(1, 0), (1, 1), (1, 0), (0, 0)]


@pytest.mark.parametrize("images", [0, 3])
def test_a_request_needs_between_one_and_capacity_slots(images):
    async def main():
        async with Admission(capacity=2, max_queue=0, max_wait_s=1).admit(images):
            pass

    with pytest.raises(ValueError):
        run(main())


def test_cancelled_in_the_same_step_as_admitted_gives_the_slots_back():
    async def main():
        gate, release, log = Admission(capacity=1, max_queue=1, max_wait_s=60), asyncio.Event(), []
        first = asyncio.create_task(hold(gate, 1, release, log, "a"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(hold(gate, 1, asyncio.Event(), log, "b"))
        await asyncio.sleep(0.01)
        release.set()
        await first  # its release admits "b" (future set) ...
        second.cancel()  # ... and "b" is cancelled before it could run
        with pytest.raises(asyncio.CancelledError):
            await second
        assert log == ["a"] and gate.in_flight == 0 and gate.queued == 0

    run(main())


def test_the_body_budget_sheds_what_does_not_fit_and_gives_bytes_back():
    seen = []
    budget = BodyBudget(100, observe=seen.append)
    with budget.hold(60):
        with pytest.raises(Overloaded) as shed:
            with budget.hold(41):
                pass
        assert shed.value.reason == "body_budget" and budget.held == 60
        with budget.hold(40):
            assert budget.held == 100
    assert budget.held == 0 and seen == [60, 100, 60, 0]
    with pytest.raises(RuntimeError):  # an error inside still gives the bytes back
        with budget.hold(500):  # alone, more than the budget is let in
            raise RuntimeError
    assert budget.held == 0
