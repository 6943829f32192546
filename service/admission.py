"""Admission control: bound the work inside the server, and shed the rest at once with 503.

A request needs one slot per image. At most ``capacity`` images are in flight past the gate
(being decoded, waiting in the batcher or in the model; beyond that, only the images of requests
that gave up while a call shared with others was under way, at most a call's worth each); requests
beyond that wait in a FIFO queue of at most ``max_queue`` requests, each for at most ``max_wait_s``.
A request that finds the queue full, or waits too long, is refused with :class:`Overloaded`, so under
any load a request's time in the server is bounded by ``max_wait_s`` plus the time to drain
``capacity`` images, instead of growing until clients time out. FIFO (a large request at the head
blocks smaller ones behind it) so that multi-image requests are not starved.

One instance per front worker, used from one event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field


class Overloaded(Exception):
    """The server sheds this request; ``reason`` is ``queue_full`` or ``queue_timeout``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(eq=False)
class _Waiter:
    images: int
    future: asyncio.Future[None] = field(repr=False)


class Admission:
    """Weighted FIFO gate: ``async with admission.admit(images): ...``."""

    def __init__(
        self,
        capacity: int,
        max_queue: int,
        max_wait_s: float,
        observe: Callable[[int, int], None] = lambda in_flight, queued: None,
    ) -> None:
        """``observe(in_flight, queued)`` is called after every change (for metrics)."""
        if capacity < 1 or max_queue < 0 or max_wait_s <= 0:
            raise ValueError("capacity must be >= 1, max_queue >= 0 and max_wait_s > 0")
        self.capacity, self.max_queue, self.max_wait_s = capacity, max_queue, max_wait_s
        self.in_flight = 0
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._observe = observe

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        """A new request would be shed at once: check before reading a large body."""
        return len(self._queue) >= self.max_queue and self.in_flight > 0

    @contextlib.asynccontextmanager
    async def admit(self, images: int) -> AsyncIterator[None]:
        """Hold ``images`` slots for the body of the ``with``; raises Overloaded instead of waiting too long."""
        if not 1 <= images <= self.capacity:
            raise ValueError(f"a request needs 1 to {self.capacity} slots, not {images}")
        await self._acquire(images)
        try:
            yield
        finally:
            self._release(images)

    async def _acquire(self, images: int) -> None:
        if not self._queue and self.in_flight + images <= self.capacity:
            self.in_flight += images
            self._observe(self.in_flight, self.queued)
            return
        if self.full:
            raise Overloaded(
                "queue_full", f"the server is at capacity ({self.max_queue} requests already waiting); retry shortly"
            )
        waiter = _Waiter(images, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self._observe(self.in_flight, self.queued)
        try:  # asyncio.wait, unlike wait_for, neither cancels the future nor loses our own cancellation
            done, _ = await asyncio.wait({waiter.future}, timeout=self.max_wait_s)
        except asyncio.CancelledError:  # the client went away while waiting
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            raise Overloaded(
                "queue_timeout", f"the server could not start this request within {self.max_wait_s:g} s; retry shortly"
            )

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.future.done():  # admitted just as the wait ended: give the slots back
            self._release(waiter.images)
        else:
            waiter.future.cancel()
            self._queue.remove(waiter)
            self._wake()  # a large request leaving the head may unblock smaller ones behind it

    def _release(self, images: int) -> None:
        self.in_flight -= images
        self._wake()

    def _wake(self) -> None:
        """Admit waiters from the head of the queue while they fit."""
        while self._queue and self.in_flight + self._queue[0].images <= self.capacity:
            waiter = self._queue.popleft()
            self.in_flight += waiter.images
            waiter.future.set_result(None)
        self._observe(self.in_flight, self.queued)


class BodyBudget:
    """Bytes of request bodies held at once: ``with budget.hold(n): ...`` around reading a body and answering.

    The admission gate counts images, and is passed only once the body has been read: without this, a burst of
    large uploads (64 bodies of 15 MiB, each copied while read) took a front worker to 1.9-2.5 GiB. A request
    holds its declared Content-Length (or the body limit, when it declares none) from before its body is read
    until it is answered; one that does not fit beside those already held is shed at once. A request alone is
    always let in, so no body within the body limit is refused for its size alone.
    """

    def __init__(self, max_bytes: int, observe: Callable[[int], None] = lambda held: None) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.max_bytes, self.held = max_bytes, 0
        self._observe = observe

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes for the body of the ``with``; Overloaded at once if they do not fit."""
        if self.held and self.held + size > self.max_bytes:
            raise Overloaded(
                "body_budget",
                f"the server holds {self.held:,} bytes of request bodies (limit {self.max_bytes:,}); retry shortly",
            )
        self.held += size
        self._observe(self.held)
        try:
            yield
        finally:
            self.held -= size
            self._observe(self.held)
