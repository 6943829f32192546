"""The coalescer joins concurrent callers' batches into fewer calls, and never makes one caller's fate another's."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.coalescing import Coalescer


class Gated:
    """A model call that records each batch and returns it times 10, once ``open`` is set."""

    def __init__(self, *, fail_when: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.open = asyncio.Event()
        self.fail_when = fail_when

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.tolist())
        await self.open.wait()
        if self.fail_when is not None and self.fail_when in batch:
            raise RuntimeError("the model service failed")
        return batch * 10


def coalescer(call: Gated, *, max_images: int = 8, max_calls: int = 1) -> Coalescer:
    return Coalescer(call, np.concatenate, max_images=max_images, max_calls=max_calls)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_idle_coalescer_sends_at_once():
    async def main():
        call = Gated()
        call.open.set()
        out = await coalescer(call)(np.array([7, 8]))
        return call.batches, out.tolist()

    assert asyncio.run(main()) == ([[7, 8]], [70, 80])


def test_callers_that_arrive_while_the_call_is_busy_share_the_next_call():
    async def main():
        call = Gated()
        join = coalescer(call, max_calls=1)
        first = asyncio.ensure_future(join(np.array([0])))
        await settle()
        rest = [asyncio.ensure_future(join(np.array([i, i + 100]))) for i in range(1, 4)]
        await settle()
        assert call.batches == [[0]]  # the others wait for the call in flight
        call.open.set()
        results = await asyncio.gather(first, *rest)
        return call.batches, [r.tolist() for r in results]

    batches, results = asyncio.run(main())
    assert batches == [[0], [1, 101, 2, 102, 3, 103]]  # one call for the three that waited
    assert results == [[0], [10, 1010], [20, 1020], [30, 1030]]  # each caller gets its own rows


def test_calls_never_exceed_max_images_and_max_calls_run_at_once():
    async def main():
        call = Gated()
        join = coalescer(call, max_images=4, max_calls=2)
        tasks = [asyncio.ensure_future(join(np.array([i]))) for i in range(11)]
        await settle()
        in_flight = len(call.batches)
        call.open.set()
        await asyncio.gather(*tasks)
        return in_flight, call.batches

    in_flight, batches = asyncio.run(main())
    assert in_flight == 2
    # the first two find a free call each; the nine that waited leave in calls of at most 4
    assert [len(b) for b in batches] == [1, 1, 4, 4, 1]
    assert sorted(i for b in batches for i in b) == list(range(11))


def test_a_batch_larger_than_max_images_goes_alone():
    async def main():
        call = Gated()
        call.open.set()
        out = await coalescer(call, max_images=2)(np.arange(5))
        return call.batches, out.tolist()

    assert asyncio.run(main()) == ([[0, 1, 2, 3, 4]], [0, 10, 20, 30, 40])


def test_a_failed_call_fails_the_callers_it_carried_and_no_other():
    async def main():
        call = Gated(fail_when=2)
        join = coalescer(call, max_images=2)
        tasks = [asyncio.ensure_future(join(np.array([i]))) for i in range(4)]
        await settle()
        call.open.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    # calls: [0] (sent at once), [1, 2] (fails), [3]
    assert results[0].tolist() == [0] and results[3].tolist() == [30]
    assert isinstance(results[1], RuntimeError) and isinstance(results[2], RuntimeError)


def test_a_caller_cancelled_before_its_call_leaves_is_taken_out_of_it():
    async def main():
        call = Gated()
        join = coalescer(call, max_calls=1)
        first = asyncio.ensure_future(join(np.array([0])))
        await settle()
        gone = asyncio.ensure_future(join(np.array([1])))
        kept = asyncio.ensure_future(join(np.array([2])))
        await settle()
        gone.cancel()
        await settle()
        call.open.set()
        await asyncio.gather(first, kept)
        return call.batches, gone.cancelled()

    batches, cancelled = asyncio.run(main())
    assert batches == [[0], [2]] and cancelled


def test_a_caller_cancelled_during_its_call_leaves_the_others_their_answers():
    async def main():
        call = Gated()
        join = coalescer(call, max_calls=1)
        gone = asyncio.ensure_future(join(np.array([1])))
        kept = asyncio.ensure_future(join(np.array([2])))
        await settle()
        gone.cancel()
        await settle()
        call.open.set()
        return (await kept).tolist(), join.in_flight

    assert asyncio.run(main()) == ([20], 0)


def test_lists_join_too():
    async def echo(batch: list[str]) -> list[str]:
        return [s.upper() for s in batch]

    async def main():
        join = Coalescer(echo, lambda parts: [x for p in parts for x in p], max_images=4, max_calls=1)
        return await asyncio.gather(join(["a"]), join(["b", "c"]))

    assert asyncio.run(main()) == [["A"], ["B", "C"]]


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(Gated(), np.concatenate, max_images=0, max_calls=1)


def test_spread_shares_what_waits_between_the_calls_that_free_up():
    async def main(spread: bool):
        call = Gated()
        join = Coalescer(call, np.concatenate, max_images=16, max_calls=2, spread=spread)
        tasks = [asyncio.ensure_future(join(np.array([i]))) for i in range(10)]
        await settle()
        call.open.set()
        await asyncio.gather(*tasks)
        return [len(b) for b in call.batches]

    spread, greedy = asyncio.run(main(True)), asyncio.run(main(False))
    assert greedy[:3] == [1, 1, 8]  # the first thread to free up takes all eight that waited
    assert spread[:2] == [1, 1] and max(spread[2:]) <= 4 and sum(spread) == 10  # at most half of them each


def test_callers_sharing_a_call_keep_their_answers_when_one_of_them_goes():
    async def main():
        release, batches = asyncio.Semaphore(0), []

        async def call(batch):
            batches.append(batch.tolist())
            await release.acquire()  # one call finishes per release
            return batch * 10

        join = Coalescer(call, np.concatenate, max_images=8, max_calls=1)
        first = asyncio.ensure_future(join(np.array([0])))
        await settle()
        gone, kept = (asyncio.ensure_future(join(np.array([i]))) for i in (1, 2))
        await settle()
        release.release()
        await first
        await settle()
        assert batches == [[0], [1, 2]]  # both in flight, together
        gone.cancel()
        await settle()
        release.release()
        return (await kept).tolist(), gone.cancelled(), join.in_flight

    assert asyncio.run(main()) == ([20], True, 0)


@pytest.mark.parametrize(
    "outputs, error",
    [(lambda batch: batch[:-1], "1 outputs for 2 inputs"), (lambda batch: None, "has no len")],
)
def test_a_call_that_gives_the_wrong_outputs_fails_its_callers_and_leaves_none_waiting(outputs, error):
    async def bad(batch):
        return outputs(batch)

    async def main():
        join = Coalescer(bad, np.concatenate, max_images=4, max_calls=1)
        return await asyncio.wait_for(asyncio.gather(join(np.array([1, 2])), return_exceptions=True), 5)

    (outcome,) = asyncio.run(main())
    assert isinstance(outcome, Exception) and error in str(outcome)


def test_a_join_that_raises_fails_its_callers():
    def broken_join(parts):
        raise ValueError("cannot join")

    async def main():
        call = Gated()
        join = Coalescer(call, broken_join, max_images=4, max_calls=1)
        first = asyncio.ensure_future(join(np.array([0])))
        await settle()
        rest = [asyncio.ensure_future(join(np.array([i]))) for i in (1, 2)]
        await settle()
        call.open.set()
        return await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 5)

    first, *rest = asyncio.run(main())
    assert first.tolist() == [0] and all(isinstance(r, ValueError) for r in rest)
