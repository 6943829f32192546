"""Graceful shutdown on SIGTERM, bounded by CLASSIFIER_GRACEFUL_TIMEOUT_S.

BentoML's process manager sends SIGTERM to every worker at once. Uvicorn then stops accepting
connections and finishes the requests it already has, with no time limit. Two gaps are closed here:
- the model runner would stop taking calls while the front still has requests in flight, which
  would then fail; so the runner keeps serving until it has been idle for QUIET_S (the front has
  nothing more to send), and only then lets uvicorn stop;
- a request stuck forever would hold the shutdown forever; so every worker exits at the timeout.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

QUIET_S = 1.0  # far above the batcher's wait and the front's decode time: the front is done
StopServer = Callable[[int, object], None]


class Activity:
    """Work in progress in a model worker; thread-safe (batches run in BentoML's threads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock, self._lock = clock, threading.Lock()
        self._busy, self._last = 0, clock()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._last = self._clock()

    def idle_for(self) -> float:
        """Seconds since the last work ended; 0 while any is running."""
        with self._lock:
            return 0.0 if self._busy else self._clock() - self._last


def drain_then_stop(stop: StopServer, timeout_s: float, idle_for: Callable[[], float] | None = None, *,
                    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait until ``idle_for() >= QUIET_S`` (if given), ask the server to stop gracefully, and force it to
    stop once ``timeout_s`` have passed since the call (uvicorn: a SIGINT after a SIGTERM forces the exit)."""
    deadline = clock() + timeout_s
    while idle_for is not None and clock() < deadline and idle_for() < QUIET_S:
        sleep(0.05)
    stop(signal.SIGTERM, None)
    while clock() < deadline:
        sleep(min(0.5, max(deadline - clock(), 0)))
    logger.warning("graceful shutdown took over %g s: stopping with requests still in flight", timeout_s)
    stop(signal.SIGINT, None)


def on_sigterm(timeout_s: float, idle_for: Callable[[], float] | None = None) -> None:
    """Route SIGTERM through drain_then_stop. Call from the worker's main thread once uvicorn has installed
    its handler (the service's ``__init__``); elsewhere (no uvicorn handler) it changes nothing."""
    stop = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(stop):
        return

    def handle(signum: int, frame: object) -> None:
        logger.info("SIGTERM: finishing in-flight requests (at most %g s)", timeout_s)
        threading.Thread(target=drain_then_stop, args=(stop, timeout_s, idle_for), daemon=True).start()

    signal.signal(signal.SIGTERM, handle)
