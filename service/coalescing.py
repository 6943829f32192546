"""Joins the model calls of concurrent requests into one call to the model service.

Every call to the model service is an HTTP request to another process, and that request costs CPU
on both sides (HTTP, BentoML's middleware, its batcher) whatever it carries: sent per image, it cost
about 3.5 ms of CPU per image on a 2-core Xeon, a third of everything outside the engine. A Coalescer
keeps at most ``max_calls`` calls in flight; what arrives while they are busy waits and leaves as one
call with everything that waited (up to ``max_images`` images). Nothing ever waits for company: an
idle coalescer sends at once, so light load sees no added latency, and under load the calls grow as
the model service falls behind, which is when batching pays. The model service's own adaptive batching
still merges what arrives there (several front workers or model workers).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar


class Batch(Protocol):
    """An array [N, ...] or a list of N items."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> Any: ...


I = TypeVar("I", bound=Batch)  # noqa: E741 - what a call takes
O = TypeVar("O", bound=Batch)  # noqa: E741 - what it gives: one output per item of I, in order


@dataclass(eq=False)
class _Job(Generic[I, O]):
    batch: I
    future: asyncio.Future[O] = field(repr=False)


class Coalescer(Generic[I, O]):
    """``await coalescer(batch)`` gives what ``call(batch)`` would, one output per item in order, with the
    batches of concurrent callers joined by ``join`` into fewer calls. An exception from a call reaches every
    caller whose items it carried; a caller cancelled before its call leaves is taken out of it.

    ``spread``: a call takes at most its share of what waits (rounded up, over ``max_calls``), so that calls
    freeing up one after another split the work between them (worker threads decoding images) instead of the
    first taking it all (the model service, which runs one call at a time per worker, wants it all)."""

    def __init__(
        self,
        call: Callable[[I], Awaitable[O]],
        join: Callable[[list[I]], I],
        *,
        max_images: int,
        max_calls: int,
        spread: bool = False,
    ) -> None:
        if max_images < 1 or max_calls < 1:
            raise ValueError("max_images and max_calls must be at least 1")
        self.call, self.join = call, join
        self.max_images, self.max_calls, self.spread = max_images, max_calls, spread
        self._waiting: collections.deque[_Job[I, O]] = collections.deque()
        self._calls: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def __call__(self, batch: I) -> O:
        job = _Job(batch, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._send_what_fits()
        try:
            return await job.future
        except asyncio.CancelledError:
            if job in self._waiting:  # not sent yet: its images need no model time
                self._waiting.remove(job)
            raise

    def _send_what_fits(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting and len(self._calls) < self.max_calls:
            limit = self.max_images
            if self.spread:
                waiting = sum(len(job.batch) for job in self._waiting)
                limit = min(limit, -(-waiting // self.max_calls))
            jobs = [self._waiting.popleft()]
            images = len(jobs[0].batch)  # a job larger than the limit goes alone: the model service splits it
            while self._waiting and images + len(self._waiting[0].batch) <= limit:
                job = self._waiting.popleft()
                jobs.append(job)
                images += len(job.batch)
            # A context of its own: a call serves many requests, none of whose context (request ids, spans) is its.
            context = contextvars.Context()
            task = loop.create_task(self._send(jobs), context=context)
            self._calls.add(task)
            task.add_done_callback(self._call_done, context=context)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._calls.discard(task)
        self._send_what_fits()

    async def _send(self, jobs: list[_Job[I, O]]) -> None:
        """One call for ``jobs``; whatever happens, every job's future is done when this returns."""
        try:
            outputs = await self.call(jobs[0].batch if len(jobs) == 1 else self.join([j.batch for j in jobs]))
            sizes = [len(job.batch) for job in jobs]
            if len(outputs) != sum(sizes):
                raise RuntimeError(f"the call gave {len(outputs)} outputs for {sum(sizes)} inputs")  # a bug: 500
            start = 0
            for job, size in zip(jobs, sizes, strict=True):
                if not job.future.done():  # its caller may have gone meanwhile
                    job.future.set_result(outputs[start : start + size])
                start += size
        except Exception as exc:  # every caller answers for its own request (a 503 each, say)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
        finally:  # cancelled (the server stopping), or worse: no caller may wait forever
            for job in jobs:
                job.future.cancel()  # no-op for those done above
