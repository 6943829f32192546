"""CPU time spent in the model's batch calls: what the engine costs, measured where it runs.

The model service's process CPU, taken while at least one batch call is under way, less its event loop thread's
own CPU meanwhile (that thread receives the next call and answers the last one). The engine's helper threads
(ONNX Runtime's, OpenVINO's, torch's) are counted with the call that started them; so is anything else the
process's other threads do meanwhile (a /v1/explain, counted in its own metric too; BentoML's health and metrics
handlers). Beside the processes' CPU from /proc this splits a server's CPU per image into the engine and the
serving stack (loadtests/hotpath.py and the benchmark report both).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def _thread_clock(ident: int) -> Callable[[], float]:
    """CPU seconds of the live thread ``ident`` so far; 0 where the platform cannot tell (its CPU then counts as
    the calls')."""
    if not hasattr(time, "pthread_getcpuclockid"):  # not on Windows or macOS
        return lambda: 0.0
    clock = time.pthread_getcpuclockid(ident)
    return lambda: time.clock_gettime(clock)


class CallCpu:
    """Records the CPU seconds spent while calls are in progress, overlapping calls once.

    ``loop_thread``: the thread whose CPU is left out, alive as long as this object; by default the main thread,
    where BentoML's workers run their event loop."""

    def __init__(self, record: Callable[[float], None], loop_thread: int | None = None) -> None:
        self._record = record
        ident = threading.main_thread().ident if loop_thread is None else loop_thread
        self._loop_cpu = _thread_clock(ident) if ident is not None else (lambda: 0.0)
        self._lock = threading.Lock()
        self._calls = 0
        self._start: float | None = None

    def _now(self) -> float | None:
        try:
            return time.process_time() - self._loop_cpu()
        except OSError as exc:  # a clock gone bad must not fail the call it measures
            logger.warning("cannot read the CPU clocks (%s): this call's CPU is not counted", exc)
            return None

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Around one call: its CPU (and that of calls overlapping it, once) is recorded when the last one ends."""
        with self._lock:
            if self._calls == 0:
                self._start = self._now()
            self._calls += 1
        try:
            yield
        finally:
            with self._lock:
                self._calls -= 1
                if self._calls == 0:
                    end = self._now()
                    if self._start is not None and end is not None:
                        self._record(max(0.0, end - self._start))
