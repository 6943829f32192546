"""CPU time spent in the model's batch calls: what the engine costs, measured where it runs.

The model service's process CPU, taken while at least one batch call is under way, less its event loop thread's
own CPU meanwhile (that thread receives the next batch and answers the last one). The engine's helper threads
(ONNX Runtime's, OpenVINO's, torch's) are counted with the call that started them. Together with the processes'
CPU from /proc this splits a server's CPU per image into the engine and everything else (loadtests/hotpath.py and
the benchmark report both).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _thread_clock(ident: int | None) -> Callable[[], float]:
    """CPU seconds of the thread ``ident`` so far; 0 where the platform cannot tell (then it counts as the call's)."""
    try:
        clock = time.pthread_getcpuclockid(ident)  # type: ignore[arg-type]
    except (AttributeError, OSError, TypeError, OverflowError):  # not Unix (or macOS), or no such thread
        return lambda: 0.0
    return lambda: time.clock_gettime(clock)


class CallCpu:
    """Counts CPU seconds spent while calls are in progress, overlapping calls once.

    ``loop_thread`` is the thread whose CPU is left out (the event loop's: by default the main thread, where
    BentoML's workers run it). A /v1/explain running at the same time in the same process counts as well; it has
    its own counter."""

    def __init__(self, record: Callable[[float], None], loop_thread: int | None = None) -> None:
        self._record = record
        self._loop_cpu = _thread_clock(threading.main_thread().ident if loop_thread is None else loop_thread)
        self._lock = threading.Lock()
        self._calls = 0
        self._start = 0.0

    def _now(self) -> float:
        return time.process_time() - self._loop_cpu()

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
                    self._record(max(0.0, self._now() - self._start))
